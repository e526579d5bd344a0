from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "pairloop"

    def ready(self) -> None:
        from annotate import invalidation

        invalidation.connect()
