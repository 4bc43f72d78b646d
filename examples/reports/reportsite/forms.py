from django import forms
from report_pdf import MAX_USER_ID


class ReportForm(forms.Form):
    user_id = forms.IntegerField(
        label="User id",
        min_value=0,
        max_value=MAX_USER_ID,
        widget=forms.TextInput(attrs={"inputmode": "numeric", "autocomplete": "off", "placeholder": "e.g. 42"}),
        error_messages={"invalid": "A user id is a whole number, 0 or more."},
    )
    email = forms.EmailField(
        label="Email me when it's ready (optional)",
        required=False,
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "placeholder": "you@example.com"}),
    )
