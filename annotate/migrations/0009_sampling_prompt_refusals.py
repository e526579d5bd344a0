from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0008_exports_progress"),
    ]

    operations = [
        migrations.AddField(
            model_name="prompt",
            name="refusal_count",
            field=models.PositiveIntegerField(
                default=0, help_text="Times the model server refused to answer it; set to 0 to sample it again."
            ),
        ),
        migrations.AddField(
            model_name="prompt",
            name="last_refusal",
            field=models.TextField(blank=True, help_text="The model server's reason, the last time it refused."),
        ),
        migrations.AddField(
            model_name="prompt",
            name="last_refused_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
