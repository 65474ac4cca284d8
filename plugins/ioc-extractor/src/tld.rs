//! Top-level domains a bare domain or URL host may end with.
//!
//! The list contains every country-code TLD in the IANA root zone and a chosen
//! set of generic TLDs: the legacy ones and the new ones seen most in mail,
//! web and abuse data. Accepting every one of the roughly 1,450 TLDs would
//! turn dotted field names such as `user.email` or `request.host` into
//! domains, so generic TLDs that are also common identifiers in logs and
//! code (`name`, `email`, `host`, `new`, `run`, `page`, `one`, ...) are left
//! out on purpose. IDN TLDs (`xn--...`) are accepted by shape.
//!
//! NOTE: the list is a snapshot. A TLD delegated later, or one left out
//! above, makes its domains invisible to the bare-domain scanner.

/// Country-code TLDs delegated in the root zone, sorted for binary search.
const COUNTRY_CODES: &[&str] = &[
    "ac", "ad", "ae", "af", "ag", "ai", "al", "am", "ao", "aq", "ar", "as", "at", "au", "aw", "ax",
    "az", "ba", "bb", "bd", "be", "bf", "bg", "bh", "bi", "bj", "bm", "bn", "bo", "br", "bs", "bt",
    "bv", "bw", "by", "bz", "ca", "cc", "cd", "cf", "cg", "ch", "ci", "ck", "cl", "cm", "cn", "co",
    "cr", "cu", "cv", "cw", "cx", "cy", "cz", "de", "dj", "dk", "dm", "do", "dz", "ec", "ee", "eg",
    "er", "es", "et", "eu", "fi", "fj", "fk", "fm", "fo", "fr", "ga", "gb", "gd", "ge", "gf", "gg",
    "gh", "gi", "gl", "gm", "gn", "gp", "gq", "gr", "gs", "gt", "gu", "gw", "gy", "hk", "hm", "hn",
    "hr", "ht", "hu", "id", "ie", "il", "im", "in", "io", "iq", "ir", "is", "it", "je", "jm", "jo",
    "jp", "ke", "kg", "kh", "ki", "km", "kn", "kp", "kr", "kw", "ky", "kz", "la", "lb", "lc", "li",
    "lk", "lr", "ls", "lt", "lu", "lv", "ly", "ma", "mc", "md", "me", "mg", "mh", "mk", "ml", "mm",
    "mn", "mo", "mp", "mq", "mr", "ms", "mt", "mu", "mv", "mw", "mx", "my", "mz", "na", "nc", "ne",
    "nf", "ng", "ni", "nl", "no", "np", "nr", "nu", "nz", "om", "pa", "pe", "pf", "pg", "ph", "pk",
    "pl", "pm", "pn", "pr", "ps", "pt", "pw", "py", "qa", "re", "ro", "rs", "ru", "rw", "sa", "sb",
    "sc", "sd", "se", "sg", "sh", "si", "sj", "sk", "sl", "sm", "sn", "so", "sr", "ss", "st", "su",
    "sv", "sx", "sy", "sz", "tc", "td", "tf", "tg", "th", "tj", "tk", "tl", "tm", "tn", "to", "tr",
    "tt", "tv", "tw", "tz", "ua", "ug", "uk", "us", "uy", "uz", "va", "vc", "ve", "vg", "vi", "vn",
    "vu", "wf", "ws", "ye", "yt", "za", "zm", "zw",
];

/// Generic TLDs, sorted for binary search.
const GENERIC: &[&str] = &[
    "academy",
    "accountant",
    "aero",
    "agency",
    "amazon",
    "app",
    "apple",
    "art",
    "asia",
    "audio",
    "auto",
    "autos",
    "baby",
    "band",
    "bank",
    "bar",
    "beauty",
    "best",
    "bet",
    "bid",
    "bike",
    "bio",
    "biz",
    "black",
    "blog",
    "blue",
    "bond",
    "boo",
    "boutique",
    "buzz",
    "cafe",
    "cam",
    "camera",
    "capital",
    "casa",
    "cash",
    "casino",
    "cat",
    "center",
    "cfd",
    "chat",
    "city",
    "click",
    "cloud",
    "club",
    "coach",
    "com",
    "community",
    "company",
    "consulting",
    "coop",
    "cricket",
    "cyou",
    "date",
    "dating",
    "deals",
    "design",
    "dev",
    "digital",
    "download",
    "edu",
    "energy",
    "estate",
    "exchange",
    "expert",
    "faith",
    "fans",
    "finance",
    "fit",
    "foo",
    "football",
    "fun",
    "fyi",
    "gallery",
    "game",
    "games",
    "gdn",
    "gift",
    "global",
    "gmbh",
    "gold",
    "google",
    "gov",
    "green",
    "guru",
    "hair",
    "homes",
    "icu",
    "inc",
    "info",
    "ink",
    "int",
    "jobs",
    "kim",
    "lat",
    "life",
    "link",
    "live",
    "llc",
    "loan",
    "lol",
    "love",
    "ltd",
    "makeup",
    "market",
    "mil",
    "mobi",
    "mom",
    "money",
    "monster",
    "mov",
    "museum",
    "net",
    "news",
    "ninja",
    "online",
    "ooo",
    "org",
    "party",
    "photo",
    "pics",
    "pink",
    "pro",
    "quest",
    "racing",
    "red",
    "rest",
    "review",
    "rocks",
    "sbs",
    "science",
    "shop",
    "site",
    "skin",
    "space",
    "store",
    "stream",
    "studio",
    "support",
    "tech",
    "tel",
    "today",
    "top",
    "trade",
    "travel",
    "uno",
    "vip",
    "wang",
    "website",
    "win",
    "work",
    "world",
    "wtf",
    "xxx",
    "xyz",
    "yachts",
    "zip",
    "zone",
];

/// Returns true when `label`, lowercase, is a TLD this crate accepts.
pub fn is_known_tld(label: &str) -> bool {
    if let Some(rest) = label.strip_prefix("xn--") {
        return !rest.is_empty()
            && rest
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    }
    let list = if label.len() == 2 {
        COUNTRY_CODES
    } else {
        GENERIC
    };
    list.binary_search(&label).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_sorted_for_binary_search() {
        assert!(COUNTRY_CODES.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(GENERIC.windows(2).all(|pair| pair[0] < pair[1]));
        assert!(GENERIC.iter().all(|tld| tld.len() > 2));
    }

    #[test]
    fn known_tlds_are_accepted() {
        for tld in ["com", "io", "ru", "uk", "xyz", "top", "zip", "xn--p1ai"] {
            assert!(is_known_tld(tld), "{tld}");
        }
    }

    #[test]
    fn identifiers_and_extensions_are_rejected() {
        for word in [
            "exe", "txt", "json", "log", "name", "email", "host", "local", "xn--",
        ] {
            assert!(!is_known_tld(word), "{word}");
        }
    }
}
