//! `relay::nginx::stat_page::parse` against pages captured from a real nginx 1.22 +
//! nginx-rtmp (see tests/fixtures/stat/README.md) and against hostile input.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use relay::nginx::stat_page::{parse, AudioMeta, StatPage, StatsError, StreamStat, VideoMeta};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/stat/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn page(name: &str) -> StatPage {
    parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const LOCALHOST: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));

fn h264_320x180() -> VideoMeta {
    VideoMeta {
        width: 320,
        height: 180,
        frame_rate: 30.0,
        codec: "H264".into(),
    }
}

fn wrap_stream(stream_body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\" ?>\n<rtmp><server><application><name>live</name>\
         <live><stream><name>s</name>{stream_body}</stream></live></application></server></rtmp>"
    )
}

fn only_stream(xml: &str) -> StreamStat {
    let page = parse(xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(page.streams.len(), 1, "{page:?}");
    page.streams.into_iter().next().unwrap()
}

// --- captured pages -------------------------------------------------------

#[test]
fn idle_server_has_no_streams() {
    let page = page("idle_server.xml");
    assert_eq!(page, StatPage::default());
    assert!(page.stream("live", "mystream").is_none());
}

#[test]
fn publishing_audio_and_video() {
    let page = page("publishing_av.xml");
    assert_eq!(page.streams.len(), 1);
    let s = page.stream("live", "mystream").expect("stream listed");
    assert_eq!(s.app, "live");
    assert_eq!(s.name, "mystream");
    assert_eq!(s.bytes_in, 237_896);
    assert_eq!(s.bw_in, 81_624);
    assert_eq!(s.nclients, 1);
    assert!(s.publishing);
    assert!(s.active);
    assert_eq!(s.video, Some(h264_320x180()));
    assert_eq!(
        s.audio,
        Some(AudioMeta {
            codec: "AAC".into(),
            sample_rate: 44_100,
            channels: 1,
        })
    );
    assert_eq!(s.has_audio(), Some(true));
    assert_eq!(s.has_video(), Some(true));
    assert_eq!(s.clients.len(), 1);
    let p = s.publisher().expect("publisher");
    assert_eq!(p.id, 8);
    assert_eq!(p.address, LOCALHOST);
    assert_eq!(p.time, Duration::from_millis(25_757));
    assert!(p.publishing);
    // Other apps, and the same name elsewhere, are not matched.
    assert!(page.stream("other", "mystream").is_none());
    assert!(page.stream("live", "MyStream").is_none());
}

#[test]
fn publisher_among_players() {
    let page = page("publishing_av_with_player.xml");
    let s = page.stream("live", "mystream").unwrap();
    assert_eq!(s.nclients, 2);
    assert_eq!(s.clients.len(), 2);
    // The player is listed first.
    assert_eq!(s.clients[0].id, 307);
    assert!(!s.clients[0].publishing);
    assert_eq!(s.clients[0].time, Duration::from_millis(3_931));
    assert_eq!(s.publisher().map(|c| c.id), Some(8));
}

#[test]
fn video_only() {
    let page = page("publishing_video_only.xml");
    let s = page.stream("live", "mystream").unwrap();
    assert!(s.publishing && s.active);
    assert_eq!(s.video, Some(h264_320x180()));
    // The page has an empty <audio></audio>.
    assert_eq!(s.audio, None);
    assert_eq!(s.has_audio(), Some(false));
    assert_eq!(s.has_video(), Some(true));
    assert_eq!(s.publisher().map(|c| c.id), Some(322));
}

#[test]
fn audio_only() {
    let page = page("publishing_audio_only.xml");
    let s = page.stream("live", "audioonly").unwrap();
    // <video> is there with zero size and no codec.
    assert_eq!(
        s.video,
        Some(VideoMeta {
            width: 0,
            height: 0,
            frame_rate: 0.0,
            codec: String::new(),
        })
    );
    assert_eq!(s.has_video(), Some(false));
    assert_eq!(s.has_audio(), Some(true));
}

#[test]
fn just_published_has_no_meta_yet() {
    let page = page("just_published_no_meta.xml");
    let s = page.stream("live", "mystream").unwrap();
    assert!(s.publishing);
    assert!(!s.active);
    assert_eq!(s.bytes_in, 0);
    assert_eq!(s.bw_in, 0);
    assert_eq!(s.video, None);
    assert_eq!(s.audio, None);
    assert_eq!(s.has_audio(), None);
    assert_eq!(s.has_video(), None);
    assert_eq!(s.publisher().map(|c| c.id), Some(8));
}

#[test]
fn without_onmetadata_the_frame_rate_is_zero() {
    let page = page("publishing_av_without_onmetadata.xml");
    let s = page.stream("other", "nometa").unwrap();
    let v = s.video.as_ref().unwrap();
    assert_eq!((v.width, v.height, v.frame_rate), (320, 180, 0.0));
    assert_eq!(s.has_audio(), Some(true));
}

#[test]
fn idle_stream_after_publisher_killed() {
    let page = page("idle_stream_after_publisher_killed.xml");
    let s = page.stream("live", "mystream").expect("still listed");
    assert!(!s.publishing);
    assert!(!s.active);
    assert!(s.publisher().is_none());
    assert_eq!(s.nclients, 1);
    assert_eq!(s.clients.len(), 1);
    assert!(!s.clients[0].publishing);
    assert_eq!(s.bw_in, 0);
    assert_eq!(s.bytes_in, 596_306);
    assert_eq!(s.video, None);
    assert_eq!(s.has_audio(), None);
}

#[test]
fn idle_stream_keeps_a_stale_bandwidth() {
    // Half a second after the publisher was killed, bw_in still shows the
    // old average: only the publisher flag tells the truth.
    let page = page("idle_stream_stale_bw.xml");
    let s = page.stream("live", "mystream").unwrap();
    assert!(s.publisher().is_none());
    assert!(!s.publishing);
    assert!(s.bw_in > 80_000);
}

#[test]
fn republished_stream_keeps_counting_bytes() {
    let idle = page("idle_stream_after_publisher_killed.xml");
    let again = page("republished_video_only_with_player.xml");
    let before = idle.stream("live", "mystream").unwrap();
    let after = again.stream("live", "mystream").unwrap();
    assert!(after.bytes_in > before.bytes_in);
    assert_eq!(after.publisher().map(|c| c.id), Some(322));
    assert_eq!(after.clients.len(), 2);
    assert_eq!(after.has_audio(), Some(false));
}

#[test]
fn application_without_live_section() {
    let page = page("app_without_live.xml");
    // A publisher connected to `nolive` appears nowhere.
    assert_eq!(page.streams.len(), 1);
    assert!(page.stream("nolive", "x").is_none());
    assert!(page.stream("live", "mystream").is_some());
}

#[test]
fn two_servers() {
    let page = page("two_servers.xml");
    assert_eq!(page.streams.len(), 2);
    let s = page
        .stream("second", "portrait")
        .expect("found in 2nd server");
    assert_eq!(
        s.video,
        Some(VideoMeta {
            width: 180,
            height: 320,
            frame_rate: 25.0,
            codec: "H264".into(),
        })
    );
    assert_eq!(
        s.audio,
        Some(AudioMeta {
            codec: "AAC".into(),
            sample_rate: 48_000,
            channels: 2,
        })
    );
    assert_eq!(s.publisher().map(|c| c.id), Some(522));
    assert!(page.stream("live", "mystream").is_some());
}

#[test]
fn first_match_across_servers() {
    let xml = "<rtmp>\
        <server><application><name>live</name><live>\
          <stream><name>s</name><bytes_in>1</bytes_in></stream>\
        </live></application></server>\
        <server><application><name>live</name><live>\
          <stream><name>s</name><bytes_in>2</bytes_in></stream>\
        </live></application></server>\
        </rtmp>";
    let page = parse(xml).unwrap();
    assert_eq!(page.streams.len(), 2);
    assert_eq!(page.stream("live", "s").unwrap().bytes_in, 1);
}

#[test]
fn every_fixture_parses() {
    let dir = format!("{}/tests/fixtures/stat", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "xml") {
            let text = std::fs::read_to_string(&path).unwrap();
            parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 8, "only {n} fixtures in {dir}");
}

// --- hostile input ----------------------------------------------------------

fn assert_xml_error(input: &str) -> String {
    match parse(input) {
        Err(e @ StatsError::Xml { .. }) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg:?}");
            msg
        }
        other => panic!("expected an XML error for {input:?}, got {other:?}"),
    }
}

#[test]
fn garbage_is_an_error() {
    for input in [
        "",
        "   \n",
        "hello",
        "{\"rtmp\": 1}",
        "<?xml version=\"1.0\"?>",
        "<!-- only a comment -->",
        "\u{0}\u{1}\u{2}<<<>>>",
        "<rtmp><server></rtmp>",
        "<rtmp></server></rtmp>",
        "<rtmp attr=></rtmp>",
        "<rtmp>&bogus;</rtmp>",
        "<rtmp></rtmp><rtmp></rtmp>",
        "junk<rtmp></rtmp>",
        "<rtmp></rtmp>junk",
        "<rtmp><bw_in>1</bw_in></rtmp><!",
    ] {
        assert_xml_error(input);
    }
}

#[test]
fn other_root_elements_are_refused() {
    let msg = assert_xml_error("<html><body><h1>502 Bad Gateway</h1></body></html>");
    assert!(msg.contains("<html>"), "{msg}");
    assert_xml_error("<rtmpx/>");
    assert_xml_error("<stat><server/></stat>");
}

#[test]
fn minimal_root_is_an_empty_page() {
    assert_eq!(parse("<rtmp/>").unwrap(), StatPage::default());
    assert_eq!(parse("<rtmp></rtmp>").unwrap(), StatPage::default());
    assert_eq!(
        parse("<?xml version=\"1.0\"?>\n<!-- hi -->\n<rtmp>\n</rtmp>\n").unwrap(),
        StatPage::default()
    );
}

#[test]
fn truncated_anywhere_is_an_error() {
    let full = fixture("publishing_av_with_player.xml");
    let end = full.find("</rtmp>").unwrap() + "</rtmp>".len();
    for cut in 0..end {
        let truncated = &full[..cut];
        assert!(
            parse(truncated).is_err(),
            "accepted a page cut at byte {cut}: ...{:?}",
            &truncated[cut.saturating_sub(40)..]
        );
    }
    assert!(parse(&full[..end]).is_ok());
}

#[test]
fn truncation_error_names_a_position() {
    let full = fixture("publishing_av.xml");
    let msg = assert_xml_error(&full[..full.len() / 2]);
    assert!(msg.contains("line "), "{msg}");
}

#[test]
fn huge_and_non_numeric_values() {
    let s = only_stream(&wrap_stream(
        "<bw_in>99999999999999999999999999999</bw_in>\
         <bytes_in>18446744073709551615</bytes_in>\
         <nclients>-3</nclients>\
         <client><id>abc</id><address>unix:</address><time>1e9</time><publishing/></client>\
         <client><id>18446744073709551616</id><address>::1</address><time>18446744073709551615</time></client>\
         <meta><video><width>4294967296</width><height>12.5</height><frame_rate>NaN</frame_rate>\
         <codec></codec></video><audio><codec>AAC</codec><sample_rate>x</sample_rate>\
         <channels> 2 </channels></audio></meta>",
    ));
    assert_eq!(s.bw_in, 0);
    assert_eq!(s.bytes_in, u64::MAX);
    assert_eq!(s.nclients, 0);
    let p = s.publisher().unwrap();
    assert_eq!((p.id, p.address, p.time), (0, None, Duration::ZERO));
    assert_eq!(s.clients[1].id, 0);
    assert_eq!(s.clients[1].address, Some("::1".parse().unwrap()));
    assert_eq!(s.clients[1].time, Duration::from_millis(u64::MAX));
    let v = s.video.as_ref().unwrap();
    assert_eq!((v.width, v.height, v.frame_rate), (0, 0, 0.0));
    assert_eq!(s.has_video(), Some(false));
    let a = s.audio.as_ref().unwrap();
    assert_eq!((a.sample_rate, a.channels), (0, 2));
    assert_eq!(s.has_audio(), Some(true));
}

#[test]
fn missing_fields_give_defaults() {
    let s = only_stream(&wrap_stream(""));
    assert_eq!(s.name, "s");
    assert_eq!((s.bytes_in, s.bw_in, s.nclients), (0, 0, 0));
    assert!(!s.publishing && !s.active);
    assert!(s.clients.is_empty() && s.video.is_none() && s.audio.is_none());

    let s = only_stream(&wrap_stream("<client/><meta/>"));
    assert_eq!(s.clients.len(), 1);
    assert_eq!(s.clients[0].id, 0);
    assert_eq!(s.video, None);
    assert_eq!(s.has_audio(), None);

    let page =
        parse("<rtmp><server><application><live><stream/></live></application></server></rtmp>")
            .unwrap();
    assert_eq!(page.streams.len(), 1);
    assert_eq!(page.streams[0].app, "");
    assert_eq!(page.streams[0].name, "");
}

#[test]
fn unknown_elements_and_attributes_are_ignored() {
    let xml = "<rtmp version=\"9\"><nginx_version>1.99</nginx_version><future/>\
        <server id=\"1\"><listen>1935</listen>\
        <application><name>live</name><hls><fragments>3</fragments></hls>\
        <live><stream_buckets>8</stream_buckets>\
        <stream><name>s</name><shiny><deep><deeper>x</deeper></deep></shiny>\
        <bytes_in unit=\"B\">10</bytes_in>\
        <client><id>5</id><swfurl>x</swfurl><geo><country>xx</country></geo><publishing/>\
        <active/><new_flag/></client>\
        <meta><video><width>1</width><height>2</height><bitrate>9</bitrate></video>\
        <data><title>t</title></data></meta>\
        <record><path>/x</path></record>\
        </stream></live><play><nclients>0</nclients></play></application></server></rtmp>";
    let s = only_stream(xml);
    assert_eq!(s.bytes_in, 10);
    assert_eq!(s.publisher().map(|c| c.id), Some(5));
    assert_eq!(s.video.as_ref().map(|v| (v.width, v.height)), Some((1, 2)));
}

#[test]
fn names_are_unescaped() {
    let s = only_stream(
        "<rtmp><server><application><name>a&amp;b</name><live><stream>\
         <name>x&lt;y&#x41;</name></stream></live></application></server></rtmp>",
    );
    assert_eq!(s.app, "a&b");
    assert_eq!(s.name, "x<yA");
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let depth = 200_000;
    let xml = format!(
        "<rtmp><server>{}{}</server></rtmp>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    assert_xml_error(&xml);
}

#[test]
fn large_page_with_many_streams() {
    let streams: String = (0..5_000)
        .map(|i| {
            format!(
                "<stream><name>s{i}</name><bytes_in>{i}</bytes_in>\
                 <client><id>{i}</id><address>10.0.0.1</address><publishing/></client></stream>"
            )
        })
        .collect();
    let xml = format!(
        "<rtmp><server><application><name>live</name><live>{streams}</live></application></server></rtmp>"
    );
    let page = parse(&xml).unwrap();
    assert_eq!(page.streams.len(), 5_000);
    assert_eq!(page.stream("live", "s4999").unwrap().bytes_in, 4_999);
}

#[test]
fn arbitrary_bytes_never_panic() {
    // A small deterministic fuzz: mutate a real page byte by byte.
    let base = fixture("two_servers.xml").into_bytes();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b"<>/&;=\"' \n0123456789-.abcx!?[]";
    for _ in 0..3_000 {
        let mut bytes = base.clone();
        for _ in 0..(1 + next() % 4) {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                1 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }
}

#[test]
fn repeated_elements_need_not_be_consecutive() {
    let xml = "<rtmp><server/><extension/><server><application><name>a</name><x/>\
        <live><stream><name>s</name>\
        <client><id>1</id></client><meta/><client><id>2</id><publishing/></client>\
        </stream><y/><stream><name>t</name></stream></live></application>\
        <z/><application><name>b</name></application></server></rtmp>";
    let page = parse(xml).unwrap();
    assert_eq!(page.streams.len(), 2);
    let s = page.stream("a", "s").unwrap();
    assert_eq!(s.clients.iter().map(|c| c.id).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(s.publisher().map(|c| c.id), Some(2));
    assert!(page.stream("a", "t").is_some());
}

#[test]
fn worst_case_pages_parse_quickly() {
    // Bodies are capped at 4 MiB by StatsClient; whatever their shape,
    // parsing one must stay cheap.
    const SIZE: usize = 4 * 1024 * 1024;
    let fill = |unit: &str| unit.repeat(SIZE / unit.len());
    let pages = [
        // many clients interleaved with unknown elements (look-ahead)
        format!(
            "<rtmp><server><application><name>a</name><live><stream><name>s</name>{}</stream></live></application></server></rtmp>",
            fill("<client><id>1</id></client><u/>")
        ),
        // many streams separated by unknown elements
        format!(
            "<rtmp><server><application><name>a</name><live>{}</live></application></server></rtmp>",
            fill("<stream><name>s</name></stream><u/>")
        ),
        // lots of unknown elements
        format!("<rtmp>{}</rtmp>", fill("<u><v/></u>")),
        // one huge text value
        format!(
            "<rtmp><server><application><name>{}</name></application></server></rtmp>",
            "n".repeat(SIZE)
        ),
    ];
    for xml in &pages {
        let started = std::time::Instant::now();
        let result = parse(xml);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(20),
            "{took:?} for a page starting {:?} ({:?})",
            &xml[..80],
            result.map(|p| p.streams.len())
        );
    }
}
