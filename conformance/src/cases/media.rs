use anyhow::{Context, Result, ensure};

use crate::client::Ctx;

crate::cases!(
    upload_and_download_roundtrip,
    thumbnail_scale_and_crop,
    media_config_has_upload_size,
    unknown_media_404,
    upload_requires_auth
);

/// A minimal uncompressed PNG of the given size (stored deflate blocks).
fn png(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn adler32(data: &[u8]) -> u32 {
        let (mut a, mut b) = (1u32, 0u32);
        for &d in data {
            a = (a + d as u32) % 65521;
            b = (b + a) % 65521;
        }
        (b << 16) | a
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut c = kind.to_vec();
        c.extend(data);
        out.extend(&c);
        out.extend(crc32(&c).to_be_bytes());
    }
    let mut raw = vec![];
    for y in 0..height {
        raw.push(0);
        for x in 0..width {
            raw.extend([(x * 4) as u8, (y * 5) as u8, 128]);
        }
    }
    let mut z = vec![0x78, 0x01];
    for (i, block) in raw.chunks(65535).enumerate() {
        let last = (i + 1) * 65535 >= raw.len();
        z.push(last as u8);
        z.extend((block.len() as u16).to_le_bytes());
        z.extend((!(block.len() as u16)).to_le_bytes());
        z.extend(block);
    }
    z.extend(adler32(&raw).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Width and height of a PNG or JPEG.
fn dimensions(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.starts_with(b"\x89PNG") {
        let w = u32::from_be_bytes(bytes.get(16..20)?.try_into().ok()?);
        let h = u32::from_be_bytes(bytes.get(20..24)?.try_into().ok()?);
        return Some((w, h));
    }
    let mut i = 2;
    while i + 9 < bytes.len() {
        if bytes[i] != 0xff {
            return None;
        }
        let marker = bytes[i + 1];
        let len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
        if (0xc0..=0xcf).contains(&marker) && ![0xc4, 0xc8, 0xcc].contains(&marker) {
            let h = u16::from_be_bytes([bytes[i + 5], bytes[i + 6]]) as u32;
            let w = u16::from_be_bytes([bytes[i + 7], bytes[i + 8]]) as u32;
            return Some((w, h));
        }
        i += 2 + len;
    }
    None
}

async fn upload(u: &crate::client::User, bytes: Vec<u8>, ct: &str) -> Result<String> {
    let r = u
        .ctx
        .raw(
            reqwest::Method::POST,
            "/_matrix/media/v3/upload?filename=test.png",
            Some(&u.token),
            Some(bytes),
            Some(ct),
        )
        .await?;
    let uri = r.str("content_uri")?;
    ensure!(uri.starts_with("mxc://"), "{uri}");
    Ok(uri.trim_start_matches("mxc://").to_owned())
}

async fn upload_and_download_roundtrip(ctx: Ctx) -> Result<()> {
    let u = ctx.register("med").await?;
    let data = b"hello media \x00\x01\x02".to_vec();
    let id = upload(&u, data.clone(), "application/octet-stream").await?;
    let r = u
        .get(&format!("/_matrix/client/v1/media/download/{id}"))
        .await?;
    ensure!(r.status == 200, "download: {} {}", r.status, r.body);
    ensure!(r.bytes == data, "bytes differ");
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        ct.starts_with("application/octet-stream"),
        "content-type {ct}"
    );
    Ok(())
}

async fn thumbnail_scale_and_crop(ctx: Ctx) -> Result<()> {
    let u = ctx.register("thumb").await?;
    let id = upload(&u, png(64, 48), "image/png").await?;
    for (method, w, h) in [("scale", 32, 32), ("crop", 16, 16)] {
        let r = u
            .get(&format!(
                "/_matrix/client/v1/media/thumbnail/{id}?width={w}&height={h}&method={method}"
            ))
            .await?;
        ensure!(r.status == 200, "{method}: {} {}", r.status, r.body);
        let ct = r
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        ensure!(ct.starts_with("image/"), "{method}: content-type {ct}");
        let (tw, th) = dimensions(&r.bytes).context("thumbnail is not a PNG or JPEG")?;
        // Servers may answer with a larger thumbnail than asked, never larger than the original.
        ensure!(
            tw > 0 && th > 0 && tw <= 64 && th <= 48,
            "{method}: {tw}x{th}"
        );
    }
    Ok(())
}

async fn media_config_has_upload_size(ctx: Ctx) -> Result<()> {
    let u = ctx.register("mcfg").await?;
    let r = u.get("/_matrix/client/v1/media/config").await?;
    ensure!(
        r.ok()?["m.upload.size"].as_u64().is_some_and(|n| n > 0),
        "{}",
        r.body
    );
    Ok(())
}

async fn unknown_media_404(ctx: Ctx) -> Result<()> {
    let u = ctx.register("m404").await?;
    u.get(&format!(
        "/_matrix/client/v1/media/download/{}/nosuchmediaid",
        u.server_name()
    ))
    .await?
    .expect(404, Some("M_NOT_FOUND"))?;
    Ok(())
}

async fn upload_requires_auth(ctx: Ctx) -> Result<()> {
    let r = ctx
        .raw(
            reqwest::Method::POST,
            "/_matrix/media/v3/upload",
            None,
            Some(b"x".to_vec()),
            Some("text/plain"),
        )
        .await?;
    r.expect(401, Some("M_MISSING_TOKEN"))?;
    Ok(())
}
