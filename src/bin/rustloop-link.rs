//! `rustloop-link`: the link step of a cell crate, without the C compiler driver in between.
//!
//! rustc links a cell by running `cc`, which runs `collect2`, which runs the `ld.lld` shim in
//! rustc's `gcc-ld` directory, which runs `rust-lld`: four processes for a link whose own work
//! takes about 20 ms. For cell crates the rustc wrapper (`src/engine/wrapper.rs`) names this
//! binary as the linker when it sits next to `rustloop` ([`LINKER_ENV`] holds the driver rustc
//! would have used). It is a binary of its own because it starts in about 1 ms, where
//! `rustloop` takes about 5 (page faults of a 36 MB executable). It translates the driver's
//! arguments into `rust-lld`'s and runs `rust-lld` directly, with what the driver adds itself
//! (start files, search paths, `--build-id`, ...) taken from the driver once (`cc -###`) and
//! kept in a file in the cache slot ([`Template`]). Measured on a warm cell: 49 ms through `cc`,
//! 33 ms for `rust-lld` alone.
//!
//! Anything it does not recognise (an option outside the set rustc uses for a Linux
//! `cdylib`, a linker other than lld, a template it cannot read) and any failed direct link
//! go to the driver unchanged, so errors and unusual set-ups read exactly as without it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The C driver rustc would have run as the linker (set by the rustc wrapper).
const LINKER_ENV: &str = "RUSTLOOP_CELL_LINKER";
/// Where the driver's additions are kept between links (a file in the cache slot).
const TEMPLATE_ENV: &str = "RUSTLOOP_LINK_TEMPLATE";

fn main() {
    let Some(driver) = std::env::var_os(LINKER_ENV) else {
        eprintln!("rustloop-link: rustloop's linker for cell crates; rustc runs it, not people");
        std::process::exit(2);
    };
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Some(plan) = Translated::new(&args) {
        let template = std::env::var_os(TEMPLATE_ENV)
            .and_then(|file| Template::load_or_make(Path::new(&file), &driver, &plan));
        if let Some(template) = template {
            let status = Command::new(&plan.lld)
                .args(["-flavor", "gnu"])
                .args(template.arguments(&plan))
                .args(plan.threads())
                .status();
            if status.is_ok_and(|s| s.success()) {
                std::process::exit(0);
            }
            // Failed: the driver links again, and its errors are the ones rustc shows.
        }
    }
    use std::os::unix::process::CommandExt;
    let error = Command::new(&driver).args(&args).exec();
    eprintln!("rustloop-link: cannot run the linker {driver:?}: {error}");
    std::process::exit(2);
}

/// The driver's arguments as `rust-lld` arguments.
struct Translated {
    /// `rust-lld`, found from the driver's `-B` directory (rustc's `gcc-ld`).
    lld: PathBuf,
    /// The `-B` directory, which the driver's own additions depend on.
    search: OsString,
    /// `-L` directories, which go before the driver's own.
    dirs: Vec<OsString>,
    /// Everything else, in order.
    rest: Vec<OsString>,
    output: OsString,
}

impl Translated {
    fn new(args: &[OsString]) -> Option<Translated> {
        let (mut search, mut lld_requested, mut shared, mut output) = (None, false, false, None);
        let (mut dirs, mut rest) = (Vec::new(), Vec::new());
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let bytes = arg.as_bytes();
            match bytes {
                b"-m64" | b"-nodefaultlibs" => {}
                b"-shared" => shared = true,
                b"-fuse-ld=lld" => lld_requested = true,
                b"-o" => output = Some(iter.next()?.clone()),
                b"-L" => dirs.push(flag("-L", iter.next()?)),
                b"-B" => search = Some(iter.next()?.clone()),
                _ if bytes.starts_with(b"-Wl,") => rest.extend(
                    bytes[4..]
                        .split(|&b| b == b',')
                        .map(|part| OsStr::from_bytes(part).to_owned()),
                ),
                _ if bytes.starts_with(b"-L") => dirs.push(arg.clone()),
                _ if bytes.starts_with(b"-B") => {
                    search = Some(OsStr::from_bytes(&bytes[2..]).into())
                }
                _ if bytes.starts_with(b"-l") => rest.push(arg.clone()),
                _ if bytes.starts_with(b"-") => return None,
                _ => rest.push(arg.clone()),
            }
        }
        let search: OsString = search?;
        let lld = Path::new(&search).join("..").join("rust-lld");
        (lld_requested && shared && lld.is_file()).then_some(Translated {
            lld,
            search,
            dirs,
            rest,
            output: output?,
        })
    }
    /// `--threads=1` when the cell links no static library but Rust's compiler builtins:
    /// starting lld's thread pool then costs more than it saves (about 1 ms of a 13 ms link).
    /// A cell that links `:dep` crates statically keeps lld's threads.
    fn threads(&self) -> Option<&'static str> {
        let statics = self.rest.iter().filter(|arg| {
            let name = Path::new(arg).file_name().unwrap_or_default().as_bytes();
            name.ends_with(b".rlib") && !name.starts_with(b"libcompiler_builtins-")
        });
        (statics.count() == 0).then_some("--threads=1")
    }
}

fn flag(name: &str, value: &OsStr) -> OsString {
    let mut flag = OsString::from(name);
    flag.push(value);
    flag
}

/// What the driver adds around a shared library's own arguments, for one driver and `-B`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Template {
    key: String,
    /// Up to the driver's first `-L` (flags, start files).
    head: Vec<String>,
    /// The driver's `-L` directories and what follows them, before the library's arguments.
    dirs: Vec<String>,
    /// After the library's arguments (end files).
    tail: Vec<String>,
}

const MARK_OBJECT: &str = "rustloop-link-template.o";
const MARK_OUTPUT: &str = "rustloop-link-template.so";

impl Template {
    fn load_or_make(file: &Path, driver: &OsStr, plan: &Translated) -> Option<Template> {
        let key = format!("{driver:?} {:?}", plan.search);
        let saved = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| serde_json::from_str::<Template>(&text).ok());
        if let Some(template) = saved.filter(|t| t.key == key) {
            return Some(template);
        }
        let template = Template::make(key, driver, &plan.search)?;
        let temporary = file.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&temporary, serde_json::to_string(&template).ok()?).ok()?;
        std::fs::rename(&temporary, file).ok()?;
        Some(template)
    }

    /// Asks the driver what it would run for a shared library linked as rustc links a cell.
    fn make(key: String, driver: &OsStr, search: &OsStr) -> Option<Template> {
        let output = Command::new(driver)
            .arg("-###")
            .args(["-m64", "-shared", "-nodefaultlibs", "-fuse-ld=lld"])
            .arg(flag("-B", search))
            .args([MARK_OBJECT, "-o", MARK_OUTPUT])
            .output()
            .ok()?;
        let text = String::from_utf8(output.stderr).ok()?;
        let line = text.lines().find(|l| l.contains("collect2"))?;
        let mut words = split_words(line)?.into_iter();
        words.next()?; // collect2 itself
        let (mut head, mut dirs, mut tail) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen_object = false;
        while let Some(word) = words.next() {
            match word.as_str() {
                "-plugin" => {
                    words.next()?;
                }
                "-o" if words.next()? == MARK_OUTPUT => {}
                "-o" => return None,
                MARK_OBJECT => seen_object = true,
                _ if word.starts_with("-plugin-opt=") || word.starts_with("-fuse-ld=") => {}
                _ if seen_object => tail.push(word),
                _ if word.starts_with("-L") || !dirs.is_empty() => dirs.push(word),
                _ => head.push(word),
            }
        }
        seen_object.then_some(Template {
            key,
            head,
            dirs,
            tail,
        })
    }

    fn arguments(&self, plan: &Translated) -> Vec<OsString> {
        let mut args: Vec<OsString> = self.head.iter().map(OsString::from).collect();
        args.push("-o".into());
        args.push(plan.output.clone());
        args.extend(plan.dirs.iter().cloned());
        args.extend(self.dirs.iter().map(OsString::from));
        args.extend(plan.rest.iter().cloned());
        args.extend(self.tail.iter().map(OsString::from));
        args
    }
}

/// The words of a `-###` command line: separated by spaces, quoted with `"` when they hold
/// special characters, `\` escaping within quotes.
fn split_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = line.trim().chars();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '\\' if quoted => word.push(chars.next()?),
            ' ' if !quoted => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            c => word.push(c),
        }
    }
    if quoted {
        return None;
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn driver_arguments_become_linker_arguments() {
        let dir = std::env::temp_dir().join(format!("rustloop-linker-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("gcc-ld")).unwrap();
        std::fs::write(dir.join("rust-lld"), "").unwrap();
        let b = format!("-B{}", dir.join("gcc-ld").display());
        let plan = Translated::new(&os(&[
            "-Wl,--version-script=/t/list",
            "-m64",
            "/t/a.o",
            "-Wl,-Bdynamic",
            "/s/librustloop.so",
            "-lgcc_s",
            "-L",
            "/t/raw-dylibs",
            &b,
            "-fuse-ld=lld",
            "-Wl,-rpath,$ORIGIN/../lib,--enable-new-dtags",
            "-o",
            "/t/libctx.so",
            "-shared",
            "-nodefaultlibs",
        ]))
        .expect("the arguments rustc uses are understood");
        let template = Template {
            key: String::new(),
            head: vec!["--build-id".into(), "/c/crti.o".into()],
            dirs: vec!["-L/usr/lib".into()],
            tail: vec!["/c/crtn.o".into()],
        };
        let words: Vec<String> = template
            .arguments(&plan)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            words,
            [
                "--build-id",
                "/c/crti.o",
                "-o",
                "/t/libctx.so",
                "-L/t/raw-dylibs",
                "-L/usr/lib",
                "--version-script=/t/list",
                "/t/a.o",
                "-Bdynamic",
                "/s/librustloop.so",
                "-lgcc_s",
                "-rpath",
                "$ORIGIN/../lib",
                "--enable-new-dtags",
                "/c/crtn.o",
            ]
        );
        assert_eq!(
            plan.threads(),
            Some("--threads=1"),
            "a cell without static crates"
        );
        let with_dep = Translated::new(&os(&[
            "/t/a.o",
            "/s/libitoa-0123.rlib",
            "/s/libcompiler_builtins-4567.rlib",
            &b,
            "-fuse-ld=lld",
            "-o",
            "/t/libctx.so",
            "-shared",
        ]))
        .unwrap();
        assert_eq!(with_dep.threads(), None, "a :dep crate linked statically");
        // Not the shape of a cell's link: left to the driver.
        assert!(
            Translated::new(&os(&["-pie", &b, "-fuse-ld=lld", "-shared", "-o", "x"])).is_none()
        );
        assert!(
            Translated::new(&os(&[&b, "-shared", "-o", "x"])).is_none(),
            "not lld"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn driver_command_lines_are_split_like_the_driver_quotes_them() {
        assert_eq!(
            split_words(
                r#" /usr/lib/collect2 -plugin x "-plugin-opt=a b" "-rpath" "\$ORIGIN\"x" -o y"#
            )
            .unwrap(),
            [
                "/usr/lib/collect2",
                "-plugin",
                "x",
                "-plugin-opt=a b",
                "-rpath",
                "$ORIGIN\"x",
                "-o",
                "y"
            ]
        );
        assert!(split_words(r#"a "b"#).is_none());
    }
}
