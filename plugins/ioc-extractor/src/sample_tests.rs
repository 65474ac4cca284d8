//! End-to-end checks of `extract` on real alerts, mails and intel files.
//!
//! Each case asserts recall (the observables an analyst expects are there,
//! with the right `internal` flag) and precision (versions, file names,
//! compliance ids, schema URLs and placeholder hashes are not). Where the
//! full output is known, the case compares it whole.
//!
//! The two Wazuh alerts below are examples published in the Wazuh
//! documentation ("VirusTotal integration" page, wazuh/wazuh-documentation,
//! Copyright Wazuh, Inc.). The Suricata, phishing, STIX, MISP and Feodo
//! samples are licensed for testing but may not be copied into this
//! repository, so those tests read them from the sample folder beside the
//! checkout and pass with a note on stderr when it is absent.

use std::path::PathBuf;

use palisade_sdk::{Plugin, Value, json};

use crate::IocExtractor;

/// Sample folder beside the checkout, relative to this crate.
const SAMPLE_DIR: &str = "../../../shared/data";

/// Wazuh FIM alert, rule 554: an empty file added on agent 10.0.2.15.
const WAZUH_FIM_ALERT: &str = r#"{"timestamp":"2022-11-17T19:17:42.694+0200","rule":{"level":5,"description":"File added to the system.","id":"554","firedtimes":2,"mail":false,"groups":["ossec","syscheck","syscheck_entry_added","syscheck_file"],"pci_dss":["11.5"],"gpg13":["4.11"],"gdpr":["II_5.1.f"],"hipaa":["164.312.c.1","164.312.c.2"],"nist_800_53":["SI.7"],"tsc":["PI1.4","PI1.5","CC6.1","CC6.8","CC7.2","CC7.3"]},"agent":{"id":"010","name":"Ubuntu","ip":"10.0.2.15"},"manager":{"name":"localhost.localdomain"},"id":"1668705462.50453","full_log":"File '/media/user/software/suspicious-file.exe' added\nMode: realtime\n","syscheck":{"path":"/media/user/software/suspicious-file.exe","mode":"realtime","size_after":"0","perm_after":"rw-r--r--","uid_after":"0","gid_after":"0","md5_after":"d41d8cd98f00b204e9800998ecf8427e","sha1_after":"da39a3ee5e6b4b0d3255bfef95601890afd80709","sha256_after":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","uname_after":"root","gname_after":"root","mtime_after":"2022-11-17T19:17:42","inode_after":1704505,"event":"added"},"decoder":{"name":"syscheck_new_entry"},"location":"syscheck"}"#;

/// Wazuh VirusTotal alert, rule 87105: EICAR detected by 66 engines.
const WAZUH_EICAR_ALERT: &str = r#"{"timestamp":"2022-11-17T19:30:25.085+0200","rule":{"level":12,"description":"VirusTotal: Alert - /media/user/software/eicar.com - 66 engines detected this file","id":"87105","mitre":{"id":["T1203"],"tactic":["Execution"],"technique":["Exploitation for Client Execution"]},"firedtimes":1,"mail":true,"groups":["virustotal"],"pci_dss":["10.6.1","11.4"],"gdpr":["IV_35.7.d"]},"agent":{"id":"010","name":"Ubuntu","ip":"10.0.2.15"},"manager":{"name":"localhost.localdomain"},"id":"1668706225.104492","decoder":{"name":"json"},"data":{"virustotal":{"found":"1","malicious":"1","source":{"alert_id":"1668706222.103798","file":"/media/user/software/eicar.com","md5":"44d88612fea8a8f36de82e1278abb02f","sha1":"3395856ce81f2b7382dee72602f798b642f14140"},"sha1":"3395856ce81f2b7382dee72602f798b642f14140","scan_date":"2022-11-17 17:15:04","positives":"66","total":"68","permalink":"https://www.virustotal.com/gui/file/275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f/detection/f-275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f-1668705304"},"integration":"virustotal"},"location":"virustotal"}"#;

const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";
const EMPTY_SHA1: &str = "da39a3ee5e6b4b0d3255bfef95601890afd80709";
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const EICAR_MD5: &str = "44d88612fea8a8f36de82e1278abb02f";
const EICAR_SHA1: &str = "3395856ce81f2b7382dee72602f798b642f14140";
const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";
const EICAR_PERMALINK: &str = "https://www.virustotal.com/gui/file/275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f/detection/f-275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f-1668705304";

/// Values from alert metadata that must never come out as observables.
const ALERT_NOISE: &[&str] = &[
    "164.312.c.1",
    "164.312.c.2",
    "11.5",
    "4.11",
    "10.6.1",
    "11.4",
    "PI1.4",
    "pi1.4",
    "II_5.1.f",
    "SI.7",
    "suspicious-file.exe",
    "/media/user/software/suspicious-file.exe",
    "eicar.com",
    "1668705462.50453",
    "1668706225.104492",
    "2022-11-17T19:17:42.694+0200",
];

/// One observable as the plugin returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    kind: String,
    value: String,
    internal: bool,
    count: u64,
}

/// The output of one `extract` call, with assertions that name the sample.
struct Output {
    sample: String,
    observables: Vec<Found>,
}

impl Output {
    fn get(&self, kind: &str, value: &str) -> Option<&Found> {
        self.observables
            .iter()
            .find(|found| found.kind == kind && found.value == value)
    }

    fn assert_has(&self, kind: &str, value: &str, internal: bool) {
        let Some(found) = self.get(kind, value) else {
            panic!(
                "{}: missing {kind} {value:?}; got {:#?}",
                self.sample, self.observables
            );
        };
        assert_eq!(
            found.internal, internal,
            "{}: internal flag of {kind} {value:?}",
            self.sample
        );
    }

    fn assert_count(&self, kind: &str, value: &str, count: u64) {
        let found = self.get(kind, value);
        assert_eq!(
            found.map(|found| found.count),
            Some(count),
            "{}: count of {kind} {value:?}",
            self.sample
        );
    }

    fn assert_absent(&self, value: &str) {
        let found = self.observables.iter().find(|found| found.value == value);
        assert!(
            found.is_none(),
            "{}: unexpected observable {found:?}",
            self.sample
        );
    }

    fn assert_no_type(&self, kind: &str) {
        let found = self.observables.iter().find(|found| found.kind == kind);
        assert!(
            found.is_none(),
            "{}: unexpected {kind} {found:?}",
            self.sample
        );
    }

    /// Compares the whole output with `expected` (type, value, internal).
    fn assert_exactly(&self, expected: &[(&str, &str, bool)]) {
        let actual: Vec<(&str, &str, bool)> = self
            .observables
            .iter()
            .map(|found| (found.kind.as_str(), found.value.as_str(), found.internal))
            .collect();
        assert_eq!(actual, expected, "{}: full output", self.sample);
    }
}

fn extract(sample: &str, input: Value) -> Output {
    let output = match IocExtractor::invoke("extract", input) {
        Ok(output) => output,
        Err(error) => panic!("{sample}: extract failed: {error:?}"),
    };
    let observables = output["observables"]
        .as_array()
        .unwrap_or_else(|| panic!("{sample}: output has no `observables` array"))
        .iter()
        .map(|item| Found {
            kind: item["type"].as_str().unwrap_or_default().to_string(),
            value: item["value"].as_str().unwrap_or_default().to_string(),
            internal: item["internal"].as_bool().unwrap_or_default(),
            count: item["count"].as_u64().unwrap_or_default(),
        })
        .collect();
    Output {
        sample: sample.to_string(),
        observables,
    }
}

/// Reads a sample file, or returns None (with a note) when it is absent.
fn read_sample(relative: &str) -> Option<String> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), SAMPLE_DIR, relative]
        .iter()
        .collect();
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) => {
            eprintln!(
                "skipping sample {relative}: cannot read {}: {error}",
                path.display()
            );
            None
        }
    }
}

/// Parses newline-delimited JSON into one array document.
fn json_lines(sample: &str, text: &str) -> Value {
    let events = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{sample}: bad JSON line: {error}"))
        })
        .collect();
    Value::Array(events)
}

fn parse_json(sample: &str, text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{sample}: bad JSON: {error}"))
}

#[test]
fn wazuh_fim_alert_yields_hashes_and_agent() {
    let document = parse_json("wazuh fim", WAZUH_FIM_ALERT);
    let expected = [
        ("domain", "localhost.localdomain", true),
        ("ipv4", "10.0.2.15", true),
        ("md5", EMPTY_MD5, false),
        ("sha1", EMPTY_SHA1, false),
        ("sha256", EMPTY_SHA256, false),
    ];
    let as_document = extract("wazuh fim as document", json!({ "document": document }));
    as_document.assert_exactly(&expected);
    let as_text = extract("wazuh fim as text", json!({ "text": WAZUH_FIM_ALERT }));
    as_text.assert_exactly(&expected);
    for value in ALERT_NOISE {
        as_document.assert_absent(value);
        as_text.assert_absent(value);
    }
}

#[test]
fn wazuh_eicar_alert_yields_permalink_and_its_hash() {
    let document = parse_json("wazuh eicar", WAZUH_EICAR_ALERT);
    let output = extract("wazuh eicar", json!({ "document": document }));
    output.assert_exactly(&[
        ("domain", "localhost.localdomain", true),
        ("ipv4", "10.0.2.15", true),
        ("md5", EICAR_MD5, false),
        ("sha1", EICAR_SHA1, false),
        ("sha256", EICAR_SHA256, false),
        ("url", EICAR_PERMALINK, false),
    ]);
    // The permalink carries the digest twice: in the path and in the id.
    output.assert_count("sha256", EICAR_SHA256, 2);
    output.assert_count("sha1", EICAR_SHA1, 2);
    for value in ALERT_NOISE {
        output.assert_absent(value);
    }
}

#[test]
fn wazuh_alerts_honour_caller_scope() {
    let document = parse_json("wazuh eicar", WAZUH_EICAR_ALERT);
    let output = extract(
        "wazuh eicar with scope",
        json!({
            "document": document,
            "internal_domains": ["virustotal.com"],
        }),
    );
    output.assert_has("url", EICAR_PERMALINK, true);
}

#[test]
fn wazuh_alert_file_matches_embedded_copies() {
    let Some(text) = read_sample("wazuh_ossec/wazuh_docs_fim_virustotal_alerts.jsonl") else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(WAZUH_FIM_ALERT),
        "wazuh alerts: first line"
    );
    assert_eq!(
        lines.get(4).copied(),
        Some(WAZUH_EICAR_ALERT),
        "wazuh alerts: fifth line"
    );

    let output = extract(
        "wazuh alerts",
        json!({ "document": json_lines("wazuh alerts", &text) }),
    );
    output.assert_has("url", "https://www.virustotal.com/gui/file/e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/detection/f-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855-1668705588", false);
    output.assert_count("domain", "localhost.localdomain", 7);
    output.assert_absent("suspicious-file10.exe");
    for value in ALERT_NOISE {
        output.assert_absent(value);
    }
}

#[test]
fn windows_defender_alert_yields_download_url() {
    let Some(text) = read_sample("wazuh_ossec/wazuh_docs_windows_defender_1116_alert.json") else {
        return;
    };
    let fwlink = "https://go.microsoft.com/fwlink/?linkid=37020&name=Virus:DOS/EICAR_Test_File&threatid=2147519003&enterprise=0";
    let expected = [
        ("domain", "localhost.localdomain", true),
        ("ipv4", "10.0.2.15", true),
        ("url", fwlink, false),
        ("url", "https://secure.eicar.org/eicar.com.txt", false),
    ];
    let document = parse_json("defender", &text);
    let as_document = extract("defender as document", json!({ "document": document }));
    as_document.assert_exactly(&expected);
    // `&amp;` in the eventdata copy is the same link as in the message.
    as_document.assert_count("url", fwlink, 2);
    extract("defender as text", json!({ "text": text })).assert_exactly(&expected);
    for noise in [
        "1.381.1755.0",
        "1.1.19900.2",
        "4.18.2211.5",
        "0x8000000000000000",
        "36f9c971-77e5-4f5e-bbef-f7162522dee1.tmp",
        "eicar.com.txt",
        "go.microsoft.com",
    ] {
        as_document.assert_absent(noise);
    }
}

#[test]
fn suricata_small_log_full_output() {
    let Some(text) = read_sample("suricata/elastic-beats_eve-small.log") else {
        return;
    };
    let expected = [
        ("domain", "clients.l.google.com", false),
        ("domain", "icloud.com", false),
        ("domain", "l2.io", false),
        ("domain", "p33-btmmdns.icloud.com", false),
        ("ipv4", "17.142.164.13", false),
        ("ipv4", "172.217.13.110", false),
        ("ipv4", "192.168.156.70", true),
        ("ipv4", "192.168.253.112", true),
        ("ipv4", "192.168.86.1", true),
        ("ipv4", "192.168.86.28", true),
        ("ipv4", "192.168.86.85", true),
        ("ipv6", "fe80::fada:cff:fedc:87f1", true),
        ("ipv6", "ff02::1:2", true),
        ("md5", "427b7337ff37eeb24d74f47d8e04cf21", false),
        ("sha1", "313573490192c685e9e53abef25453ed0d5e2aee", false),
        (
            "sha256",
            "f610428ebddf6f8cf9e39322e672583c45fcdcf885efad0ab48fd53a3dfc2c4b",
            false,
        ),
    ];
    let document = json_lines("suricata small", &text);
    extract(
        "suricata small as document",
        json!({ "document": document }),
    )
    .assert_exactly(&expected);
    let as_text = extract("suricata small as text", json!({ "text": text }));
    as_text.assert_exactly(&expected);
    for noise in [
        "OpenSSH_7.6",
        "libssh_0.7.0",
        "67.0.3396.99",
        "dd.xml",
        "device-desc.xml",
    ] {
        as_text.assert_absent(noise);
    }
}

#[test]
fn suricata_alert_log_yields_public_test_addresses() {
    let Some(text) = read_sample("suricata/elastic-integrations_test-eve-6-0.log") else {
        return;
    };
    let document = json_lines("suricata 6.0", &text);
    let output = extract("suricata 6.0", json!({ "document": document }));
    output.assert_exactly(&[
        ("domain", "testmynids.org", false),
        ("ipv4", "10.0.0.72", true),
        ("ipv4", "10.1.22.212", true),
        ("ipv4", "10.1.46.5", true),
        ("ipv4", "10.31.64.240", true),
        ("ipv4", "175.16.199.1", false),
        ("ipv4", "81.2.69.192", false),
    ]);
    for noise in ["7.58.0", "00:03:2d:3f:e5:63", "2010_09_23"] {
        output.assert_absent(noise);
    }
}

#[test]
fn stix_patterns_yield_their_values() {
    let pattern_ip = "[ipv4-addr:value = '10.0.0.0']";
    let pattern_hash = "[file:hashes.'SHA-256' = 'ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c']";
    let output = extract(
        "stix patterns",
        json!({ "document": [pattern_ip, pattern_hash] }),
    );
    output.assert_exactly(&[
        ("ipv4", "10.0.0.0", true),
        (
            "sha256",
            "ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c",
            false,
        ),
    ]);

    for (file, extra_sha256) in [
        ("threat_intel/stix21/indicator-for-c2-ip-address.json", None),
        (
            "threat_intel/stix21/indicators-for-C2-with-COA.json",
            Some("ef537f25c895bfa782526529a9b63d97aa631564d5d789c2b765448c8635fb6c"),
        ),
    ] {
        let Some(text) = read_sample(file) else {
            continue;
        };
        let output = extract(file, json!({ "document": parse_json(file, &text) }));
        let mut expected = vec![("ipv4", "10.0.0.0", true)];
        expected.extend(extra_sha256.map(|hash| ("sha256", hash, false)));
        output.assert_exactly(&expected);
    }
}

#[test]
fn misp_event_yields_hashes_and_links_not_keys() {
    let file = "threat_intel/misp/misp_event_circl_xorist_ransomware.json";
    let Some(text) = read_sample(file) else {
        return;
    };
    let sha256 = "b3c4ae251f8094fa15b510051835c657eaef2a6cea46075d3aec964b14a99f68";
    let output = extract(file, json!({ "document": parse_json(file, &text) }));
    output.assert_exactly(&[
        ("md5", "0749bae92ca336a02c83d126e04ec628", false),
        ("sha1", "77b0c41b7d340b8a3d903f21347bbf06aa766b5b", false),
        ("sha256", sha256, false),
        (
            "url",
            "http://www.xylibox.com/2011/06/have-fun-with-trojan-ransomwin32xorist.html",
            false,
        ),
        (
            "url",
            &format!("https://www.virustotal.com/file/{sha256}/analysis/1469554268/"),
            false,
        ),
    ]);
    // The TEA key in the comment is 32 hex digits in mixed case.
    output.assert_absent("85350044df4ac3518d185678a9414a7f");
    output.assert_absent("3z4wng9603it23y.exe");
}

#[test]
fn feodo_block_list_yields_defanged_contact() {
    let file = "threat_intel/ioc_lists/feodotracker_ipblocklist_intelmq_feodoips.csv";
    let Some(text) = read_sample(file) else {
        return;
    };
    let output = extract(file, json!({ "text": text }));
    output.assert_exactly(&[
        ("domain", "abuse.ch", false),
        ("email", "feodotracker@abuse.ch", false),
        ("ipv4", "10.213.75.205", true),
        ("ipv4", "192.16.238.101", false),
        ("url", "https://feodotracker.abuse.ch/blocklist/", false),
    ]);
    let defanged = IocExtractor::invoke("extract", json!({ "text": text }))
        .ok()
        .and_then(|output| {
            output["observables"]
                .as_array()?
                .iter()
                .find(|item| item["type"] == "email")
                .and_then(|item| item["defanged"].as_bool())
        });
    assert_eq!(
        defanged,
        Some(true),
        "{file}: email written as `[at]` is defanged"
    );
}

#[test]
fn credential_phish_yields_sender_infrastructure() {
    let file = "phishing/phishing_pot_sample-1146.eml";
    let Some(text) = read_sample(file) else {
        return;
    };
    let output = extract(file, json!({ "text": text }));
    output.assert_has(
        "url",
        "http://thebandalisty.com/track/o42413HrAjp18708448KAHY1821750VJx33636XXkb176",
        false,
    );
    output.assert_has("email", "solutionteamrecognizd03@gmail.com", false);
    output.assert_has("email", "no-reply@access-accsecurity.com", false);
    output.assert_has("email", "bounce@inventorecfety.co.uk", false);
    output.assert_has("domain", "inventorecfety.co.uk", false);
    output.assert_has("domain", "access-accsecurity.com", false);
    output.assert_has("ipv4", "89.144.44.6", false);
    output.assert_has("ipv4", "103.225.77.255", false);
    output.assert_has("ipv4", "10.152.24.206", true);
    output.assert_has("ipv6", "2603:10a6:10:2b0::10", false);
    output.assert_has("ipv6", "::1", true);
    output.assert_count("email", "solutionteamrecognizd03@gmail.com", 7);

    // Exchange header checksums and the message id are not observables.
    output.assert_no_type("sha256");
    output.assert_no_type("md5");
    output.assert_absent(
        "f5280de2-8a70-46fb-97f9-57e505b436a8@db3eur04ft026.eop-eur04.prod.protection.outlook.com",
    );
    for noise in [
        "15.20.6699.20",
        "15.20.6699.14",
        "gmail.com",
        "thebandalisty.com",
        "0.02",
    ] {
        output.assert_absent(noise);
    }
}

#[test]
fn quoted_printable_phish_yields_whole_links() {
    let file = "phishing/phishing_pot_sample-985.eml";
    let Some(text) = read_sample(file) else {
        return;
    };
    let output = extract(file, json!({ "text": text }));
    for url in [
        "https://cheapdedicatedserver.in/images/y.php",
        "http://google.com/",
        "http://cdn.emiratesnbd.com/assets/images/lock-icon_Ins.jpg",
        "https://pbs.twimg.com/media/F1dk9RkXoAETxd0?format=jpg&name=small",
        "https://amoj7eje.emltrk.com/v2/amoj7eje?rd&i=[CONTACT-ID]&t=PSB_AD_AED-CROSS-BORDER-CHARGES_05JUL23_PSB_EDM",
        "https://contentdelivery.mashreqbank.com/kyc/email/Conv_contact_phone.png",
    ] {
        output.assert_has("url", url, false);
    }

    output.assert_has(
        "email",
        "postmaster=relay-smtp-us.writershomestead.com@relay-us.calibrate.studio",
        false,
    );
    output.assert_has(
        "email",
        "postmaster@relay-smtp-us.writershomestead.com",
        false,
    );
    output.assert_has("ipv4", "143.55.232.11", false);
    output.assert_has("ipv4", "10.13.4.189", true);
    output.assert_has("domain", "relay-us.calibrate.studio", false);
    output.assert_has("domain", "pc232-11.mailgun.net", false);

    output.assert_no_type("sha256");
    for noise in [
        "http://www.w3.org/1999/xhtml",
        "https://amoj7eje.emltrk.com/v2/amoj7eje?rd&i=",
        "http://go",
        "3.55.232.11",
        "a.es",
        "td.es",
        "y.php",
        "hotmail.com@relay-us.calibrate.studio",
        "pot=hotmail.com@relay-us.calibrate.studio",
        "20230725200047.ea3eb838f72e2cc6@relay-us.calibrate.studio",
        "15.20.6609.33",
    ] {
        output.assert_absent(noise);
    }
}

#[test]
fn splunk_and_guardduty_payloads_skip_ids() {
    if let Some(text) = read_sample("splunk_webhooks/splunk_docs_webhook_alert_action_payload.json")
    {
        let document = parse_json("splunk webhook", &text);
        extract("splunk webhook", json!({ "document": document })).assert_exactly(&[(
            "url",
            "http://web.example.local:8000/app/search/@go?sid=scheduler_admin_search_W2_at_14232356_132",
            true,
        )]);
    }
    let file =
        "splunk_webhooks/guardduty_findings_elastic-integrations_test-guardduty_lines1and3.log";
    if let Some(text) = read_sample(file) {
        let output = extract(file, json!({ "document": json_lines(file, &text) }));
        output.assert_has("ipv4", "175.16.199.1", false);
        // Finding and detector ids are hex but not digests.
        output.assert_no_type("md5");
    }
}
