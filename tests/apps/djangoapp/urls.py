import json

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("hello from django")


@csrf_exempt
def echo(request, name):
    body = json.loads(request.body) if request.body else None
    return JsonResponse({"method": request.method, "body": body, "path": request.path, "name": name,
                         "query": request.GET.get("q"), "cookie": request.COOKIES.get("c")})


def stream(request):
    return StreamingHttpResponse((f"row{i}\n" for i in range(3)), content_type="text/plain")


urlpatterns = [path("", index), path("echo/<str:name>", echo), path("stream", stream)]
