"""Mail a finished job's outcome, with a link to its result, through the operator's SMTP server."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

from kvern.notify.webhook import DeliveryFailed
from kvern.spec import SmtpSpec

SUBJECTS = {
    "succeeded": "is ready",
    "failed": "failed",
    "dead": "failed",
    "cancelled": "was cancelled",
}


def message(smtp: SmtpSpec, to: str, view: dict[str, Any], link: str) -> EmailMessage:
    mail = EmailMessage()
    short_task = str(view["task"]).rsplit(".", 1)[-1].replace("_", " ")
    mail["Subject"] = f"Your {short_task} {SUBJECTS.get(view['status'], 'finished')}"
    mail["From"] = smtp.sender
    mail["To"] = to
    mail["Message-ID"] = f"<kvern-{view['id']}@{smtp.sender.rsplit('@', 1)[-1]}>"  # the same on a resend
    lines = [f"Job {view['id']} ({view['task']}) ended {view['status']} at {view['finished_at']}."]
    if view["status"] == "succeeded":
        lines.append(f"Your result: {link}")
    else:
        lines += [f"Error: {view.get('error') or 'none recorded'}", f"Details: {link}"]
    mail.set_content("\n\n".join(lines) + "\n")
    return mail


def send_email(smtp: SmtpSpec, to: str, view: dict[str, Any], link: str) -> str:
    """Send one mail; returns the server's answer. Any SMTP, TLS or network error is a DeliveryFailed."""
    mail = message(smtp, to, view, link)
    context = ssl.create_default_context()
    try:
        if smtp.security == "tls":
            server: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
        else:
            server = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
        with server:
            if smtp.security == "starttls":
                server.starttls(context=context)
            password = smtp.password()
            if smtp.username and password is not None:
                server.login(smtp.username, password)
            refused = server.send_message(mail)
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
    if refused:
        raise DeliveryFailed(f"refused: {refused}")
    return "250 accepted"
