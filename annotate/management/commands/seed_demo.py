import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from annotate.models import ModelVersion, Prompt, conversation_hash
from annotate.sampling.local_server import base_model_prepare

DEMO_PROMPTS = Path(__file__).resolve().parents[2] / "demo_prompts.json"
DEMO_USERS = (("admin", True), ("annotator", False))


class Command(BaseCommand):
    help = "Load the demo prompts, create the demo admin and annotator, and register the base model version."

    def handle(self, *args: Any, **options: Any) -> None:
        added = self._load_prompts()
        self.stdout.write(f"demo prompts: {added} added, {Prompt.objects.count()} in all")
        version = ModelVersion.objects.ensure_base(name=settings.SERVED_MODEL_NAME, base_model=base_model_prepare())
        self.stdout.write(f"model version: {version.name} ({version.status})")
        for username, password in self._ensure_users().items():
            self.stdout.write(f"login: {username} / {password}")

    def _load_prompts(self) -> int:
        rows = json.loads(DEMO_PROMPTS.read_text())
        known = set(Prompt.objects.values_list("content_hash", flat=True))
        fresh = [row for row in rows if conversation_hash(row["messages"]) not in known]
        with transaction.atomic():
            for row in fresh:
                Prompt.objects.create(
                    messages=row["messages"], prompt_set=row["prompt_set"], tags=row["tags"], source="demo"
                )
        return len(fresh)

    def _ensure_users(self) -> dict[str, str]:
        """Demo logins: PAIRLOOP_DEMO_PASSWORD, or passwords generated once and kept in var/ to print again."""
        credentials_file = settings.VAR_DIR / "demo-credentials.json"
        saved = json.loads(credentials_file.read_text()) if credentials_file.exists() else {}
        chosen = os.environ.get("PAIRLOOP_DEMO_PASSWORD", "")
        User = get_user_model()
        logins = {}
        for username, is_staff in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            password = chosen or saved.get(username) or secrets.token_urlsafe(12)
            if user is None:
                user = User(username=username, is_staff=is_staff, is_superuser=is_staff)
                user.set_password(password)
                user.save()
            elif chosen and not user.check_password(chosen):
                user.set_password(chosen)
                user.save()
            elif not chosen and username not in saved:
                password = "(unchanged: set PAIRLOOP_DEMO_PASSWORD to reset it)"
            logins[username] = password
        if not chosen:
            to_save = {name: pw for name, pw in logins.items() if not pw.startswith("(")}
            credentials_file.parent.mkdir(parents=True, exist_ok=True)
            credentials_file.touch(mode=0o600)
            credentials_file.write_text(json.dumps(to_save, indent=2))
        return logins
