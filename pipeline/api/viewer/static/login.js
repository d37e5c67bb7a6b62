// The login form: the token goes once to /view/login, which sets an HttpOnly session cookie.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const field = document.getElementById("token");
  const error = document.getElementById("login-error");
  error.textContent = "";
  const answer = await fetch("/view/login", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Samstream-Viewer": "1" },
    body: JSON.stringify({ token: field.value }),
  });
  field.value = "";
  if (answer.status === 204) {
    if (location.pathname === "/view/login") location.assign("/view");
    else location.reload();
  } else {
    const wait = answer.headers.get("Retry-After");
    error.textContent =
      answer.status === 401 ? "Wrong token."
      : answer.status === 429 ? `Too many failed sign-ins: try again in ${wait} s.`
      : `Sign-in failed (HTTP ${answer.status}).`;
  }
});
