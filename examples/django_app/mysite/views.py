import hashlib
import os

from django.http import HttpResponse, JsonResponse
from django.urls import get_script_prefix, reverse
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt


def index(request):
    links = [reverse("hello", args=["café"]), reverse("env") + "?q=a+b", reverse("echo")]
    items = "".join(
        f'<li><a href="{escape(url)}">{escape(url)}</a> '
        f'(<a href="{escape(request.build_absolute_uri(url))}">absolute</a>)'
        for url in links
    )
    return HttpResponse(f"<!doctype html><title>Django on wsgi_fcgi</title><ul>{items}</ul>")


def hello(request, name):
    return HttpResponse(f"Hello, {name}!", content_type="text/plain; charset=utf-8")


def env(request, rest=None):
    meta = request.META
    return JsonResponse(
        {
            "SCRIPT_NAME": meta.get("SCRIPT_NAME"),
            "PATH_INFO": meta.get("PATH_INFO"),
            "QUERY_STRING": meta.get("QUERY_STRING"),
            "HTTP_PROXY": meta.get("HTTP_PROXY"),
            "path": request.path,
            "path_info": request.path_info,
            "script_prefix": get_script_prefix(),
            "reverse_index": reverse("index"),
            "absolute_index": request.build_absolute_uri(reverse("index")),
            "is_secure": request.is_secure(),
            "GET": {k: request.GET.getlist(k) for k in request.GET},
            "pid": os.getpid(),
        }
    )


@csrf_exempt  # an API endpoint; forms rendered by Django keep CSRF protection
def echo(request):
    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    body = request.body
    return JsonResponse(
        {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "content_type": request.content_type,
            "POST": {k: request.POST.getlist(k) for k in request.POST},
        }
    )
