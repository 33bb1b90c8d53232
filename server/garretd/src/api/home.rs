//! `GET /`: a short page for people who open the server in a browser.

use axum::response::Html;

pub async fn home() -> Html<&'static str> {
    Html(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Garret binary cache</title></head>
<body style="font-family: sans-serif; max-width: 42em; margin: 3em auto; line-height: 1.5">
<h1>Garret</h1>
<p>This is a Nix binary cache server (compatible with Attic's API and Nix's HTTP binary cache protocol).</p>
<h2>Use a cache</h2>
<pre>garret login myserver https://this-server/ &lt;token&gt;
garret use myserver:mycache</pre>
<p>or, with plain Nix, add <code>https://this-server/mycache</code> to <code>substituters</code> and the
cache's public key (shown by <code>garret cache info mycache</code>) to <code>trusted-public-keys</code>.</p>
<h2>Push to a cache</h2>
<pre>garret push mycache ./result
# or, without any client:
nix copy --to https://this-server/mycache ./result   # token in netrc as the password</pre>
<p>The stock <code>attic</code> client works too. Health: <a href="/healthz">/healthz</a>.</p>
</body></html>
"#,
    )
}
