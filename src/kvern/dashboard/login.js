// Sign in: the key goes in a JSON POST body; the answer sets an HttpOnly cookie, then the page reloads.
"use strict";

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.hidden = true;
  const key = document.getElementById("key").value.trim();
  const response = await fetch("login", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key }),
    credentials: "same-origin",
  });
  if (response.ok) {
    window.location.reload();
    return;
  }
  error.textContent = response.status === 401 ? "That is not an admin key of this instance." : `Error ${response.status}`;
  error.hidden = false;
});
