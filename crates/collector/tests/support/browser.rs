//! A real browser for the console's tests: Debian's Chromium, headless, driven through the
//! DevTools protocol (the `headless_chrome` crate), with a fresh profile in a temporary folder.
//! Every request the pages make is recorded (`Network.requestWillBeSent`), and so is everything
//! the browser logs (CSP violations included), so that tests can say no page reached anywhere
//! but the collector.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::{Browser as CdpBrowser, Emulation, Log, Network, Page};
use headless_chrome::{Browser, LaunchOptions, Tab};

/// The laptop screen the pages are looked at on.
pub const SCREEN: (u32, u32) = (1366, 768);

pub struct Chrome {
    _browser: Browser,
    pub tab: Arc<Tab>,
    /// Every URL the browser requested, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Every log entry and console message, as `level: text (url)`.
    pub log: Arc<Mutex<Vec<String>>>,
    pub downloads: PathBuf,
    pub profile: PathBuf,
    _dir: tempfile::TempDir,
}

fn chromium() -> PathBuf {
    // Debian's /usr/bin/chromium is a shell wrapper; the binary itself is here.
    for p in ["/usr/lib/chromium/chromium", "/usr/bin/chromium"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("Chromium is not installed: scripts/test installs Debian's `chromium` package");
}

impl Chrome {
    pub fn launch() -> Chrome {
        let dir = tempfile::Builder::new()
            .prefix("interdict-chromium-")
            .tempdir()
            .unwrap();
        let profile = dir.path().join("profile");
        let downloads = dir.path().join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let args: Vec<&std::ffi::OsStr> = [
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-domain-reliability",
            "--no-pings",
        ]
        .iter()
        .map(std::ffi::OsStr::new)
        .collect();
        let opts = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .headless(true)
            .sandbox(false)
            .enable_gpu(false)
            .window_size(Some(SCREEN))
            .user_data_dir(Some(profile.clone()))
            .args(args)
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .unwrap();
        let browser = Browser::new(opts).expect("start Chromium");
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(Duration::from_secs(30));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (r, l) = (requests.clone(), log.clone());
        tab.add_event_listener(Arc::new(move |e: &Event| match e {
            Event::NetworkRequestWillBeSent(x) => {
                r.lock().unwrap().push(x.params.request.url.clone());
            }
            Event::LogEntryAdded(x) => {
                let en = &x.params.entry;
                l.lock().unwrap().push(format!(
                    "{:?}/{:?}: {} ({})",
                    en.source,
                    en.level,
                    en.text,
                    en.url.clone().unwrap_or_default()
                ));
            }
            Event::RuntimeConsoleAPICalled(x) => {
                l.lock()
                    .unwrap()
                    .push(format!("console {:?}: {:?}", x.params.Type, x.params.args));
            }
            Event::RuntimeExceptionThrown(x) => {
                l.lock()
                    .unwrap()
                    .push(format!("exception: {:?}", x.params.exception_details));
            }
            _ => {}
        }))
        .unwrap();
        tab.call_method(Network::Enable {
            max_total_buffer_size: None,
            max_resource_buffer_size: None,
            max_post_data_size: None,
            report_direct_socket_traffic: None,
            enable_durable_messages: None,
        })
        .unwrap();
        tab.call_method(Log::Enable(None)).unwrap();
        tab.enable_runtime().unwrap();
        tab.call_method(CdpBrowser::SetDownloadBehavior {
            behavior: CdpBrowser::SetDownloadBehaviorBehaviorOption::Allow,
            browser_context_id: None,
            download_path: Some(downloads.display().to_string()),
            events_enabled: Some(true),
        })
        .unwrap();
        Chrome {
            _browser: browser,
            tab,
            requests,
            log,
            downloads,
            profile,
            _dir: dir,
        }
    }

    /// Open `url` and wait for the page.
    pub fn goto(&self, url: &str) {
        self.mark();
        self.tab
            .navigate_to(url)
            .unwrap()
            .wait_until_navigated()
            .unwrap();
        self.wait_new_page(url);
    }

    /// Mark the document shown now, so that [`Chrome::wait_new_page`] can tell the next one
    /// from it (DevTools' "navigated" can come before the new document is there).
    fn mark(&self) {
        self.eval("(window.__interdict_old = true)");
    }

    /// Wait (at most 30 s) until a document other than the marked one is fully loaded.
    fn wait_new_page(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval("window.__interdict_old !== true && document.readyState === 'complete'")
            != serde_json::json!(true)
        {
            assert!(
                Instant::now() < deadline,
                "{what}: no new page loaded within 30 s (showing {})",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the tab shows now.
    pub fn url(&self) -> String {
        self.eval("location.href")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Evaluate JavaScript in the page (through DevTools: the pages themselves run none) and
    /// return its value as JSON.
    pub fn eval(&self, js: &str) -> serde_json::Value {
        let r = self
            .tab
            .evaluate(&format!("JSON.stringify({js})"), false)
            .unwrap();
        let s = r.value.and_then(|v| v.as_str().map(str::to_string));
        s.and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// The visible text of the first element matching `selector` (empty when there is none).
    pub fn text(&self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(document.querySelector({sel}) || {{innerText: ''}}).innerText"
        ))
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
    }

    /// How many elements match `selector`.
    pub fn count(&self, selector: &str) -> usize {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelectorAll({sel}).length"))
            .as_u64()
            .unwrap_or(0) as usize
    }

    /// Click the element and wait for the page it leads to.
    pub fn click_and_wait(&self, selector: &str) {
        self.mark();
        self.tab.find_element(selector).unwrap().click().unwrap();
        self.tab.wait_until_navigated().unwrap();
        self.wait_new_page(selector);
    }

    /// Press a key that leads to another page (Enter in a form, on a link) and wait for it.
    pub fn press_and_wait(&self, key: &str) {
        self.mark();
        self.tab.press_key(key).unwrap();
        self.wait_new_page(key);
    }

    /// Type into a form field (replacing what is there).
    pub fn fill(&self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!("(document.querySelector({sel}).value = '', true)"));
        self.tab
            .find_element(selector)
            .unwrap()
            .type_into(text)
            .unwrap();
    }

    /// Save what the laptop screen shows, and the whole page, under
    /// `target/console-screenshots/NAME.png` and `NAME-full.png`.
    pub fn shot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self
            .tab
            .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        let h = self
            .eval("document.documentElement.scrollHeight")
            .as_u64()
            .unwrap_or(SCREEN.1 as u64)
            .min(6000) as u32;
        self.tab
            .call_method(Emulation::SetDeviceMetricsOverride {
                width: SCREEN.0,
                height: h.max(SCREEN.1),
                device_scale_factor: 1.0,
                mobile: false,
                scale: None,
                screen_width: None,
                screen_height: None,
                position_x: None,
                position_y: None,
                dont_set_visible_size: None,
                screen_orientation: None,
                viewport: None,
                display_feature: None,
                device_posture: None,
            })
            .unwrap();
        let png = self
            .tab
            .capture_screenshot(Page::CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::write(dir.join(format!("{name}-full.png")), png).unwrap();
        self.tab
            .call_method(Emulation::ClearDeviceMetricsOverride(None))
            .unwrap();
    }

    /// The addresses in the browser's history database (read from a copy: the browser keeps
    /// it open).
    pub fn history(&self) -> Vec<String> {
        let db = self.profile.join("Default/History");
        let copy = self.downloads.join("History.copy");
        if std::fs::copy(&db, &copy).is_err() {
            return Vec::new();
        }
        let c = rusqlite::Connection::open(&copy).unwrap();
        let mut st = c.prepare("SELECT url FROM urls").unwrap();
        st.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Click a download link and wait (at most 30 s) for the file; its contents.
    pub fn download(&self, selector: &str) -> Vec<u8> {
        let before: Vec<PathBuf> = files(&self.downloads);
        self.tab.find_element(selector).unwrap().click().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = files(&self.downloads);
            let new: Vec<&PathBuf> = now
                .iter()
                .filter(|p| !before.contains(p))
                .filter(|p| {
                    !p.extension()
                        .is_some_and(|e| e == "crdownload" || e == "tmp")
                })
                .collect();
            if let Some(p) = new.first() {
                return std::fs::read(p).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "no download from {selector} within 30 s; folder: {now:?}; log: {:?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect()
}
