from django.apps import AppConfig


class AnnotateConfig(AppConfig):
    name = "annotate"
    verbose_name = "pairloop"

    def ready(self) -> None:
        from annotate import events, invalidation
        from annotate.hooks import services

        invalidation.connect()
        events.event_happened.connect(services.webhook_deliveries_for_event, dispatch_uid="webhook-deliveries")
