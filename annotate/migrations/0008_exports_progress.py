from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0007_round_votes_left_out"),
    ]

    operations = [
        migrations.AddField(
            model_name="export",
            name="votes_total",
            field=models.PositiveIntegerField(blank=True, help_text="Votes matching the filters.", null=True),
        ),
        migrations.AddField(
            model_name="export",
            name="votes_read",
            field=models.PositiveIntegerField(default=0, help_text="Votes read so far (updated while running)."),
        ),
    ]
