SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "djangoapp.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
USE_TZ = True
DATABASES = {}
