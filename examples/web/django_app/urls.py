"""The example's routes: the admin page and the JSON and streaming endpoints it calls."""

from django.urls import path

from scans import views

urlpatterns = [
    path("", views.page),
    path("actions", views.actions),
    path("actions/<str:module>/<str:action>", views.call),
    path("scans", views.start_scan),
    path("scans/<int:task_id>", views.show_scan),
    path("scans/<int:task_id>/stop", views.stop_scan),
    path("scans/<int:task_id>/log", views.scan_log),
]
