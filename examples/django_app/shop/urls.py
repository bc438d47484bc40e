from django.urls import path

from . import views

urlpatterns = [
    path("health", views.health),
    path("metrics", views.metrics),
    path("products", views.Products.as_view()),
    path("products/<int:product_id>", views.Product.as_view()),
    path("whoami", views.WhoAmI.as_view()),
]
