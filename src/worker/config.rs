//! Command-line options of the worker server, shared by `kubewsgi worker` and `kubewsgi run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// What to load and how to run it: the gunicorn-like options.
#[derive(Args, Debug, Clone)]
pub struct WorkerOpts {
    /// The WSGI app: `module:callable`, `module:factory()` or `path/file.py:callable`.
    #[arg(value_name = "APP", env = "KUBEWSGI_APP")]
    pub app: String,

    /// Change to this directory before loading the app (it is put first on `sys.path`).
    #[arg(long, env = "KUBEWSGI_CHDIR", value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// Python virtualenv whose packages the app uses (default: `$VIRTUAL_ENV`).
    #[arg(long, env = "VIRTUAL_ENV", value_name = "DIR")]
    pub venv: Option<PathBuf>,

    /// Number of worker processes.
    #[arg(long, env = "KUBEWSGI_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,

    /// Python threads per worker process.
    #[arg(long, env = "KUBEWSGI_THREADS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: u32,

    /// In-pod autoscaling: fewest worker processes kept while idle.
    #[arg(long, env = "KUBEWSGI_MIN_WORKERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub min_workers: Option<u32>,

    /// In-pod autoscaling: most worker processes started while requests wait.
    #[arg(long, env = "KUBEWSGI_MAX_WORKERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_workers: Option<u32>,

    /// A request running longer than this many seconds gets 504 and its worker is replaced (0 = never).
    #[arg(long, env = "KUBEWSGI_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub timeout: Duration,

    /// Seconds in-flight requests get to finish on SIGTERM, SIGHUP or recycling.
    #[arg(long, env = "KUBEWSGI_GRACEFUL_TIMEOUT", default_value = "30", value_parser = parse_seconds)]
    pub graceful_timeout: Duration,

    /// Recycle a worker process after this many requests (0 = never).
    #[arg(long, env = "KUBEWSGI_MAX_REQUESTS", default_value_t = 0)]
    pub max_requests: u64,

    /// Add a random 0..=N to `--max-requests` per worker so they do not all recycle at once.
    #[arg(long, env = "KUBEWSGI_MAX_REQUESTS_JITTER", default_value_t = 0)]
    pub max_requests_jitter: u64,

    /// Seconds an idle keep-alive connection is held open.
    #[arg(long, env = "KUBEWSGI_KEEP_ALIVE", default_value = "5", value_parser = parse_seconds)]
    pub keep_alive: Duration,

    /// Restart workers when a Python source file under the app directory changes (development).
    #[arg(long, env = "KUBEWSGI_RELOAD", value_parser = clap::builder::BoolishValueParser::new())]
    pub reload: bool,

    /// Give up (exit status 3) after this many failed app imports while no worker has booted
    /// (0 = retry forever; default 5, and 1 in `kubewsgi run`, where a broken import ends it at once).
    #[arg(long, env = "KUBEWSGI_MAX_BOOT_FAILURES")]
    pub max_boot_failures: Option<u32>,

    /// In-pod autoscaling: seconds all threads must stay busy before a worker is added.
    #[arg(long, env = "KUBEWSGI_SCALE_UP_AFTER", default_value = "1", value_parser = parse_seconds)]
    pub scale_up_after: Duration,

    /// In-pod autoscaling: seconds a worker's worth of threads must stay idle before one is retired.
    #[arg(long, env = "KUBEWSGI_SCALE_DOWN_AFTER", default_value = "30", value_parser = parse_seconds)]
    pub scale_down_after: Duration,
}

/// Failed imports the worker server retries by default before it gives up.
pub const MAX_BOOT_FAILURES: u32 = 5;

/// Parses a duration given in (possibly fractional) seconds: `30`, `0.5`.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl WorkerOpts {
    /// These options as `kubewsgi worker` arguments, so a parent can start the worker server with them.
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![self.app.clone().into()];
        let mut opt = |k: &str, v: std::ffi::OsString| {
            a.push(k.into());
            a.push(v);
        };
        if let Some(d) = &self.chdir {
            opt("--chdir", d.clone().into());
        }
        if let Some(v) = &self.venv {
            opt("--venv", v.clone().into());
        }
        opt("--workers", self.workers.to_string().into());
        opt("--threads", self.threads.to_string().into());
        if let Some(n) = self.min_workers {
            opt("--min-workers", n.to_string().into());
        }
        if let Some(n) = self.max_workers {
            opt("--max-workers", n.to_string().into());
        }
        opt("--timeout", self.timeout.as_secs_f64().to_string().into());
        opt(
            "--graceful-timeout",
            self.graceful_timeout.as_secs_f64().to_string().into(),
        );
        opt("--max-requests", self.max_requests.to_string().into());
        opt(
            "--max-requests-jitter",
            self.max_requests_jitter.to_string().into(),
        );
        opt(
            "--keep-alive",
            self.keep_alive.as_secs_f64().to_string().into(),
        );
        if let Some(n) = self.max_boot_failures {
            opt("--max-boot-failures", n.to_string().into());
        }
        opt(
            "--scale-up-after",
            self.scale_up_after.as_secs_f64().to_string().into(),
        );
        opt(
            "--scale-down-after",
            self.scale_down_after.as_secs_f64().to_string().into(),
        );
        if self.reload {
            a.push("--reload".into());
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        opts: WorkerOpts,
    }

    #[test]
    fn to_args_round_trips() {
        let cmd = Cmd::parse_from([
            "x",
            "app:make()",
            "--workers",
            "3",
            "--timeout",
            "2.5",
            "--max-workers",
            "5",
            "--reload",
            "--max-boot-failures",
            "1",
        ]);
        let again = Cmd::parse_from(std::iter::once("x".into()).chain(cmd.opts.to_args()));
        assert_eq!(format!("{:?}", cmd.opts), format!("{:?}", again.opts));
        assert_eq!(again.opts.timeout, Duration::from_millis(2500));
        assert_eq!(again.opts.max_workers, Some(5));
        assert_eq!(again.opts.max_boot_failures, Some(1));
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("abc").is_err());
    }
}

/// Checks option combinations clap cannot express; called before anything is bound.
pub fn validate(o: &WorkerOpts) -> Result<(), super::Error> {
    let bad = |m: String| Err(super::Error::Config(m));
    if let (Some(min), Some(max)) = (o.min_workers, o.max_workers)
        && min > max
    {
        return bad(format!("--min-workers {min} is above --max-workers {max}"));
    }
    let (app, _) = split_app(&o.app).map_err(super::Error::Config)?;
    if let Some(d) = &o.chdir
        && !d.is_dir()
    {
        return bad(format!("--chdir {}: not a directory", d.display()));
    }
    if let Some(v) = &o.venv
        && !v.join("pyvenv.cfg").is_file()
    {
        return bad(format!(
            "--venv {}: not a virtualenv (no pyvenv.cfg)",
            v.display()
        ));
    }
    if app.ends_with(".py") {
        let base = o.chdir.clone().unwrap_or_default();
        if !base.join(app).is_file() {
            return bad(format!("app file {app} not found"));
        }
    }
    Ok(())
}

/// Splits `module:callable` (or `path/file.py:callable`, `module:factory(args)`) at the last colon
/// outside parentheses; a missing callable means `application`, as in gunicorn.
pub fn split_app(spec: &str) -> Result<(&str, &str), String> {
    let spec = spec.trim();
    let paren = spec.find('(').unwrap_or(spec.len());
    let (module, attr) = match spec[..paren].rfind(':') {
        Some(i) => (&spec[..i], &spec[i + 1..]),
        None => (spec, "application"),
    };
    if module.is_empty() || attr.is_empty() {
        return Err(format!(
            "app `{spec}`: expected module:callable, module:factory() or path/file.py:callable"
        ));
    }
    let name = attr.split('(').next().unwrap_or("");
    let valid_ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    if !name.split('.').all(valid_ident) || (attr.contains('(') && !attr.ends_with(')')) {
        return Err(format!(
            "app `{spec}`: `{attr}` is not a Python name or call"
        ));
    }
    if !module.ends_with(".py") && !module.split('.').all(valid_ident) {
        return Err(format!(
            "app `{spec}`: `{module}` is not a module name or a .py file"
        ));
    }
    Ok((module, attr))
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    #[test]
    fn app_specs() {
        assert_eq!(split_app("probe:app"), Ok(("probe", "app")));
        assert_eq!(
            split_app("pkg.mod:create_app()"),
            Ok(("pkg.mod", "create_app()"))
        );
        assert_eq!(
            split_app("m:create_app(\"a:b\", 1)"),
            Ok(("m", "create_app(\"a:b\", 1)"))
        );
        assert_eq!(split_app("apps/x.py:app"), Ok(("apps/x.py", "app")));
        assert_eq!(split_app("mod"), Ok(("mod", "application")));
        assert!(split_app("mod:").is_err());
        assert!(split_app(":app").is_err());
        assert!(split_app("m:1x").is_err());
        assert!(split_app("m:f(").is_err());
        assert!(split_app("bad module:app").is_err());
    }
}
