//! A Django project behind `kubewsgi run`: views through the worker server, `collectstatic`
//! output (ManifestStaticFilesStorage, hashed names) served by the proxy.

mod run_support;

use std::path::Path;

use run_support::*;

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn project(root: &Path) {
    write(root, "mysite/__init__.py", "");
    write(
        root,
        "mysite/settings.py",
        r#"
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages", "django.contrib.staticfiles",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "DIRS": []}]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "collected"
STATICFILES_DIRS = [BASE_DIR / "assets"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"},
}
USE_X_FORWARDED_HOST = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
"#,
    );
    write(
        root,
        "mysite/urls.py",
        r#"
import json
from django.http import HttpResponse
from django.templatetags.static import static
from django.urls import path

def index(request):
    return HttpResponse(json.dumps({
        "css": static("site.css"),
        "admin_css": static("admin/css/base.css"),
        "host": request.get_host(),
        "secure": request.is_secure(),
        "remote": request.META.get("REMOTE_ADDR"),
    }), content_type="application/json")

def echo(request):
    return HttpResponse(str(len(request.body)))

urlpatterns = [path("", index), path("echo", echo)]
"#,
    );
    write(
        root,
        "mysite/wsgi.py",
        "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n\
         from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n",
    );
    write(root, "assets/site.css", "body { color: #0b6e4f }\n");
}

#[test]
fn django_views_and_collected_static_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    project(root);
    let out = std::process::Command::new(venv().join("bin/python"))
        .args(["-c", "import os,sys; os.environ['DJANGO_SETTINGS_MODULE']='mysite.settings'; sys.path.insert(0, '.'); \
                      import django; django.setup(); from django.core.management import call_command; \
                      call_command('collectstatic', interactive=False, verbosity=0)"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "collectstatic: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(root.join("collected/staticfiles.json").exists());

    let mount = format!("/static={}", root.join("collected").display());
    let r = Run::start(
        "mysite.wsgi:application",
        root,
        &["--static", &mount, "--workers", "1", "--threads", "2"],
    );
    let resp = r.get("/");
    assert_eq!(status(&resp), 200, "{resp}");
    let j = json(&resp);
    assert_eq!(j["host"], "example.test");
    assert_eq!(j["secure"], false);
    assert_eq!(j["remote"], "127.0.0.1");
    let css = j["css"].as_str().unwrap().to_string();
    assert!(
        css.starts_with("/static/site.") && css.ends_with(".css") && css != "/static/site.css",
        "{css}"
    );

    // Hashed names from the manifest: served by the proxy with the year-long cache.
    for url in [css.as_str(), j["admin_css"].as_str().unwrap()] {
        let s = r.get(url);
        assert_eq!(status(&s), 200, "{url}: {s}");
        assert_eq!(
            header(&s, "cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{url}"
        );
        assert!(
            header(&s, "content-type").unwrap().starts_with("text/css"),
            "{url}"
        );
        assert!(header(&s, "etag").is_some());
    }
    assert_eq!(body(&r.get(&css)), "body { color: #0b6e4f }\n");
    // The unhashed copy is there too, without the immutable cache.
    let plain = r.get("/static/site.css");
    assert_eq!(status(&plain), 200);
    assert_eq!(header(&plain, "cache-control"), None);
    // The forwarded scheme reaches Django.
    let h = raw(
        r.addr,
        b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(json(&h)["secure"], false);
    // A POST body reaches the view.
    let (out, ok) = curl(&[
        "--data-binary",
        "0123456789abcdef",
        &format!("http://{}/echo", r.addr),
    ]);
    assert!(ok && out == "16", "{out}");
}
