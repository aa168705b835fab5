from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("hello/<str:name>", views.hello, name="hello"),
    path("env", views.env, name="env"),
    path("env/<path:rest>", views.env, name="env-rest"),
    path("echo", views.echo, name="echo"),
]
