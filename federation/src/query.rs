//! Query strings whose parameters repeat (`v=…&v=…`, `ver=…&ver=…`), which
//! serde's one-value-per-key query extractor cannot read.

/// Every value of a query parameter, percent-decoded (`+` is a space).
pub(crate) fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(query) = query else {
        return vec![];
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == name)
        .filter_map(|(_, v)| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
        .collect()
}
