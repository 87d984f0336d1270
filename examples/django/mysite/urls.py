import os

from django.http import JsonResponse
from django.shortcuts import render
from django.urls import path


def index(request):
    return render(request, "index.html", {"pod": os.environ.get("HOSTNAME", "")})


def info(request):
    return JsonResponse(
        {
            "framework": "django",
            "host": request.get_host(),
            "secure": request.is_secure(),
            "pod": os.environ.get("HOSTNAME", ""),
        }
    )


urlpatterns = [path("", index), path("api/info", info)]
