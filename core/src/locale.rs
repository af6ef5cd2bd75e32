//! The language of text shown to users: task status messages and alert titles.
//!
//! Logs, errors and command-line help are English; only what the Java side shows to the team
//! is localized, zh-CN by default and English with `MONITOR_LOCALE=en`.

use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Locale {
    #[default]
    #[serde(rename = "zh-CN")]
    ZhCn,
    #[serde(rename = "en")]
    En,
}

impl FromStr for Locale {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zh-cn" | "zh_cn" | "zh" => Ok(Locale::ZhCn),
            "en" | "en-us" | "en_us" => Ok(Locale::En),
            other => Err(format!("expected zh-CN or en, got {other:?}")),
        }
    }
}

impl std::fmt::Display for Locale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Locale::ZhCn => "zh-CN",
            Locale::En => "en",
        })
    }
}
