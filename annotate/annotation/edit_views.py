"""Staff review of the answers annotators wrote with their votes (annotate/annotation/edits.py): reject one so that
no later round or export uses it, or take a rejection back. Shown on the pair's page (templates/campaigns/pair.html)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.http import require_POST

from annotate.annotation import edits
from annotate.annotation.campaign_views import pair_page
from annotate.errors import Conflict, Invalid
from annotate.models import HumanAnswer
from annotate.web.pages import AppRequest, staff_required


class ReviewForm(forms.Form):
    decision = forms.ChoiceField(choices=[("reject", "Reject"), ("accept", "Accept again")])
    reason = forms.CharField(required=False, max_length=settings.RATIONALE_MAX_LENGTH)


@require_POST
@staff_required
def edit_review(request: AppRequest, answer_id: int) -> HttpResponse:
    human_answer = get_object_or_404(HumanAnswer.objects.select_related("judgement"), pk=answer_id)
    pair_id = human_answer.judgement.pair_id
    form = ReviewForm(request.POST)
    try:
        if not form.is_valid():
            raise Invalid({"decision": "choose reject or accept again; a reason of at most 2000 characters"})
        reject = form.cleaned_data["decision"] == "reject"
        edits.human_answer_review(
            human_answer=human_answer, by=request.user, reject=reject, reason=form.cleaned_data["reason"]
        )
    except (Invalid, Conflict) as error:
        status = 409 if isinstance(error, Conflict) else 400
        return pair_page(request, pair_id, status=status, review_error=str(error), review_answer=human_answer.pk)
    done = "rejected: later rounds and exports leave it out" if reject else "accepted again"
    messages.info(request, f"Written answer {human_answer.pk} {done}.")
    return HttpResponseRedirect(reverse("pair-detail", args=[pair_id]), status=303)
