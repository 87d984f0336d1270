"""A one-file Django project: a view rendering a template with a loop, through the middleware stack."""

import os

from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))

settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-only-not-secret",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "DIRS": [os.path.join(HERE, "templates")]}],
    USE_TZ=True,
)

import django  # noqa: E402

django.setup()

from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402

PRODUCTS = [{"name": f"Product {i}", "price": f"{i * 3.5:.2f}", "stock": i % 7} for i in range(20)]


def catalog(request):
    return render(request, "catalog.html", {"title": "Catalog", "products": PRODUCTS})


urlpatterns = [path("catalog", catalog)]

from django.core.wsgi import get_wsgi_application  # noqa: E402

app = get_wsgi_application()
