//! The content repository: uploaded files on disk, metadata in the store, and
//! thumbnails generated on demand and cached.

use std::{io::Write, path::PathBuf, sync::Arc};

use bytes::Bytes;
use image::{DynamicImage, GenericImageView, ImageFormat, imageops::FilterType};

use crate::{
    Error, Result,
    ids::{now_ms, random_string},
    store::{MainStore, MediaRecord},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbnailMethod {
    Scale,
    Crop,
}

pub struct MediaFile {
    pub content_type: String,
    pub filename: Option<String>,
    pub bytes: Bytes,
}

/// The largest thumbnail we generate, whatever is asked.
const MAX_THUMBNAIL_SIDE: u32 = 1024;

/// The content repository: files under the data directory, their records in
/// the store.
pub struct Media {
    store: Arc<dyn MainStore>,
    /// `<data_dir>/media`.
    dir: PathBuf,
    max_upload_size: u64,
}

impl Media {
    pub(crate) fn new(
        store: Arc<dyn MainStore>,
        data_dir: &std::path::Path,
        max_upload_size: u64,
    ) -> Self {
        Self {
            store,
            dir: data_dir.join("media"),
            max_upload_size,
        }
    }

    fn media_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    fn media_path(&self, media_id: &str) -> PathBuf {
        let shard = media_id.get(..2).unwrap_or("__");
        self.media_dir().join(shard).join(media_id)
    }

    /// Stores an upload durably and returns its media id.
    pub async fn upload_media(
        &self,
        uploader: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        bytes: Bytes,
    ) -> Result<String> {
        if bytes.len() as u64 > self.max_upload_size {
            return Err(Error::TooLarge(
                "Upload is larger than the server allows".into(),
            ));
        }
        let media_id = random_string(24);
        let path = self.media_path(&media_id);
        let size = bytes.len() as i64;
        tokio::task::spawn_blocking(move || write_durably(&path, &bytes))
            .await
            .map_err(Error::internal)??;
        self.store
            .put_media(&MediaRecord {
                media_id: media_id.clone(),
                content_type: content_type.map(str::to_owned),
                filename: filename.map(str::to_owned),
                size,
                uploader: Some(uploader.to_owned()),
                created_ts: now_ms() as i64,
            })
            .await?;
        Ok(media_id)
    }

    pub async fn get_media(&self, media_id: &str) -> Result<MediaFile> {
        let rec = self
            .store
            .get_media(media_id)
            .await?
            .ok_or_else(|| Error::not_found("Media not found"))?;
        let bytes = tokio::fs::read(self.media_path(media_id))
            .await
            .map_err(|_| Error::not_found("Media not found"))?;
        Ok(MediaFile {
            content_type: rec
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            filename: rec.filename,
            bytes: bytes.into(),
        })
    }

    pub async fn thumbnail(
        &self,
        media_id: &str,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
    ) -> Result<MediaFile> {
        let (width, height) = (
            width.clamp(1, MAX_THUMBNAIL_SIDE),
            height.clamp(1, MAX_THUMBNAIL_SIDE),
        );
        let tag = match method {
            ThumbnailMethod::Scale => "scale",
            ThumbnailMethod::Crop => "crop",
        };
        let cache = self
            .media_dir()
            .join("thumbnails")
            .join(format!("{media_id}-{width}x{height}-{tag}"));
        let original = self.get_media(media_id).await?;
        if let Ok(bytes) = tokio::fs::read(&cache).await {
            let content_type = sniff_type(&bytes);
            return Ok(MediaFile {
                content_type,
                filename: None,
                bytes: bytes.into(),
            });
        }
        let src = original.bytes.clone();
        let (bytes, content_type) =
            tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, String)> {
                let img = image::load_from_memory(&src).map_err(|_| {
                    Error::Unknown("Media is not an image that can be thumbnailed".into())
                })?;
                let thumb = make_thumbnail(&img, width, height, method);
                encode(&thumb)
            })
            .await
            .map_err(Error::internal)??;
        let to_cache = bytes.clone();
        let cache_path = cache.clone();
        // A failed cache write only costs a regeneration next time.
        let _ = tokio::task::spawn_blocking(move || write_durably(&cache_path, &to_cache)).await;
        Ok(MediaFile {
            content_type,
            filename: None,
            bytes: bytes.into(),
        })
    }
}

fn write_durably(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::internal("media path has no parent"))?;
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", random_string(8)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn make_thumbnail(
    img: &DynamicImage,
    width: u32,
    height: u32,
    method: ThumbnailMethod,
) -> DynamicImage {
    let (w, h) = img.dimensions();
    match method {
        ThumbnailMethod::Scale => {
            if w <= width && h <= height {
                img.clone()
            } else {
                img.resize(width, height, FilterType::Triangle)
            }
        }
        ThumbnailMethod::Crop => {
            if w <= width && h <= height {
                // Never upscale: crop what fits.
                let (cw, ch) = (width.min(w), height.min(h));
                img.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
            } else {
                img.resize_to_fill(width, height, FilterType::Triangle)
            }
        }
    }
}

fn encode(img: &DynamicImage) -> Result<(Vec<u8>, String)> {
    let mut out = std::io::Cursor::new(Vec::new());
    if img.color().has_alpha() {
        img.write_to(&mut out, ImageFormat::Png)
            .map_err(Error::internal)?;
        Ok((out.into_inner(), "image/png".into()))
    } else {
        DynamicImage::ImageRgb8(img.to_rgb8())
            .write_to(&mut out, ImageFormat::Jpeg)
            .map_err(Error::internal)?;
        Ok((out.into_inner(), "image/jpeg".into()))
    }
}

fn sniff_type(bytes: &[u8]) -> String {
    if bytes.starts_with(b"\x89PNG") {
        "image/png"
    } else {
        "image/jpeg"
    }
    .into()
}
