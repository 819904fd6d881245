"""`lm serve` against the official openai client on 127.0.0.1, the inspector page in headless
Chromium, and `lm chat`, all on one tiny trained run."""

import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import chex
import jax
import numpy as np
import pytest
from tiny import tiny_cfg

pytest.importorskip("fastapi", reason="lm serve needs the serve extra: pip install -e '.[serve]'")
pytest.importorskip("uvicorn", reason="lm serve needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the tests' client is in the serve extra")

from lm import cli
from lm.inference import engine, sampling
from lm.inference.request import GREEDY
from lm.model import transformer
from lm.serving import api, chat
from lm.serving.textstream import CHAT_STOP, TextStream, chat_prompt
from lm.training import loop

ROOT = Path(__file__).resolve().parents[2]
LM = "import sys; from lm.cli import main; sys.exit(main())"
SLOTS = 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    # a 64-token context (trained on 32) leaves room for a chat template and a reply
    cfg = tiny_cfg(tmp, "model.max_seq_len=64")
    loop.train_run(cfg, tmp / "run", progress=False, print_fn=lambda *_: None)
    return tmp / "run"


def _start(served, api_key=None, run_engine=True):
    app = api.create_app(served, api_key, run_engine=run_engine)
    sock = api.bind("127.0.0.1", 0)
    server = api.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    port = sock.getsockname()[1]
    return server, thread, port


@pytest.fixture(scope="module")
def server(run_dir):
    served = api.load_served(str(run_dir), slots=SLOTS, max_waiting=512, chunk=4)
    served.engine.warmup()
    srv, thread, port = _start(served)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           max_retries=0, timeout=120)  # fmt: skip
    yield SimpleNamespace(port=port, served=served, client=client, run=run_dir)
    srv.should_exit = True
    thread.join(20)


def _http(port, method, path, body=None, headers=None):
    """(status, parsed JSON body) of one raw request; `body` bytes are sent as they are."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    conn.request(method, path, body=body, headers={"Content-Type": "application/json",
                                                  **(headers or {})})  # fmt: skip
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data else None


def _lm_sample(capsys, run, prompt, *extra):
    assert cli.main(["sample", "--run", str(run), "--prompt", prompt, *extra]) == 0
    out = capsys.readouterr().out
    assert out.startswith(prompt) and out.endswith("\n")
    return out[len(prompt) : -1]


# ---------------------------------------------------------------- the OpenAI API


def test_completions_equal_lm_sample_greedy_and_seeded(server, capsys):
    c, name = server.client, server.served.name
    assert [m.id for m in c.models.list().data] == [name]
    r = c.completions.create(model=name, prompt="def ", max_tokens=12, temperature=0)
    assert r.choices[0].finish_reason in ("length", "stop") and r.object == "text_completion"
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens <= 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    greedy = _lm_sample(capsys, server.run, "def ", "--temperature", "0", "--max-new-tokens", "12")
    assert r.choices[0].text == greedy
    # a seed reproduces, and is the key `lm sample --seed` uses
    kw = dict(model=name, prompt="import", max_tokens=10, temperature=1.0, seed=7)
    first, again = c.completions.create(**kw), c.completions.create(**kw)
    assert first.choices[0].text == again.choices[0].text
    sampled = _lm_sample(capsys, server.run, "import", "--temperature", "1", "--seed", "7",
                         "--max-new-tokens", "10")  # fmt: skip
    assert first.choices[0].text == sampled
    other = c.completions.create(**{**kw, "seed": 8, "n": 3})
    assert [ch.index for ch in other.choices] == [0, 1, 2]
    assert len({ch.text for ch in other.choices} | {first.choices[0].text}) > 1


def test_chat_and_streaming(server):
    c, name = server.client, server.served.name
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    r = c.chat.completions.create(model=name, messages=msgs, temperature=0, max_tokens=6)
    msg = r.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    # the reply is the model's greedy continuation of the documented template
    tok, served = server.served.tok, server.served
    ids = [tok.bos_id, *tok.encode(chat_prompt(msgs))]
    assert r.usage.prompt_tokens == len(ids)
    new = sampling.generate(served.params, served.m, [ids], jax.random.PRNGKey(0), 6, GREEDY,
                            eos_id=tok.eos_id, pad_id=tok.pad_id)[0]  # fmt: skip
    ts = TextStream(served.decode, [CHAT_STOP], lstrip=True)
    want = ts.push([t for t in new if t != tok.eos_id])[0] + ts.close()
    assert msg.content == want

    stream = c.chat.completions.create(
        model=name, messages=msgs, temperature=0, max_tokens=6, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == msg.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] is not None
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens and not chunks[-1].choices

    plain = c.completions.create(model=name, prompt="for ", max_tokens=9, temperature=0)
    parts = list(c.completions.create(model=name, prompt="for ", max_tokens=9, temperature=0,
                                      stream=True))  # fmt: skip
    assert "".join(p.choices[0].text for p in parts) == plain.choices[0].text


def test_logprobs_stop_and_echo(server):
    c, name = server.client, server.served.name
    r = c.completions.create(model=name, prompt="x = ", max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) <= 8
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) == 3 and max(t.values()) >= v - 1e-6
               for t, v in zip(lp.top_logprobs, lp.token_logprobs, strict=True))  # fmt: skip
    text = r.choices[0].text
    # stop at the first occurrence of a piece of that text: it ends just before it
    stop = next((text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].strip()),
                None)  # fmt: skip
    if stop is not None:
        s = c.completions.create(model=name, prompt="x = ", max_tokens=8, temperature=0,
                                 stop=[stop])  # fmt: skip
        assert s.choices[0].text == text[: text.index(stop)]
        assert s.choices[0].finish_reason == "stop"
    e = c.completions.create(model=name, prompt="x = ", max_tokens=8, temperature=0, echo=True)
    assert e.choices[0].text == "x = " + text
    ch = c.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": "a"}],
        temperature=0,
        max_tokens=3,
        logprobs=True,
        top_logprobs=2,
    )
    content = ch.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 and t.bytes is not None for t in content)
    # top_k and min_p travel in extra_body, as for other OpenAI-compatible servers
    k1 = c.completions.create(model=name, prompt="a", max_tokens=5, temperature=1.0, seed=1,
                              extra_body={"top_k": 1})  # fmt: skip
    g = c.completions.create(model=name, prompt="a", max_tokens=5, temperature=0)
    assert k1.choices[0].text == g.choices[0].text  # top-k 1 is greedy


BAD = {
    "not JSON": (b"{bad", "not valid JSON"),
    "not an object": (b"[1, 2]", "JSON object"),
    "unknown field": ({"prompt": "a", "max_tokens": 2, "bogus": 1}, "bogus"),
    "temperature too high": ({"prompt": "a", "temperature": 2.5}, "temperature"),
    "top_p zero": ({"prompt": "a", "top_p": 0}, "top_p"),
    "n zero": ({"prompt": "a", "n": 0}, "n"),
    "negative max_tokens": ({"prompt": "a", "max_tokens": -1}, "max_tokens"),
    "wrong type": ({"prompt": "a", "max_tokens": "ten"}, "max_tokens"),
    "too many tokens": ({"prompt": "a", "max_tokens": 70}, "context"),
    "prompt too long": ({"prompt": "x" * 70}, "context"),
    "token id out of range": ({"prompt": [1, 99999]}, "token ids"),
    "penalty": ({"prompt": "a", "presence_penalty": 1.0}, "presence_penalty"),
    "five stops": ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    "lone surrogate": ({"prompt": "a\ud800"}, "prompt"),
    "no prompt": ({"max_tokens": 2}, "prompt"),
}
BAD_CHAT = {
    "no messages": ({"messages": []}, "messages"),
    "bad role": ({"messages": [{"role": "robot", "content": "x"}]}, "role"),
    "top_logprobs without logprobs": (
        {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "logprobs"),
    "long conversation": ({"messages": [{"role": "user", "content": "y" * 70}]}, "context"),
}  # fmt: skip


def test_bad_requests_get_400_and_the_server_keeps_serving(server):
    name = server.served.name
    for what, (body, culprit) in [*BAD.items(), *((k, v) for k, v in BAD_CHAT.items())]:
        path = "/v1/chat/completions" if what in BAD_CHAT else "/v1/completions"
        if isinstance(body, dict):
            body = {"model": name, **body}
        status, err = _http(server.port, "POST", path, body)
        assert status == 400, (what, status, err)
        e = err["error"]
        assert e["type"] == "invalid_request_error" and culprit in e["message"], (what, e)
        assert "\n" not in e["message"]
    status, err = _http(server.port, "POST", "/v1/completions", {"model": "gpt-4", "prompt": "a"})
    assert status == 404 and err["error"]["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        server.client.completions.create(model=name, prompt="a", temperature=-1)
    r = server.client.completions.create(model=name, prompt="still here", max_tokens=3)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_32_concurrent_clients_lose_nothing(server):
    """32 clients x 4 requests, more than the 8 slots: every answer complete and equal to
    what the same request gets alone."""
    name, port = server.served.name, server.port
    prompts = [f"def f{i}(" for i in range(8)]
    alone = {
        p: server.client.completions.create(model=name, prompt=p, max_tokens=6, temperature=0)
        .choices[0]
        .text
        for p in prompts
    }
    got, errors = [], []

    def client(k):
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                          max_retries=0, timeout=180)  # fmt: skip
        try:
            for j in range(4):
                p = prompts[(k + j) % len(prompts)]
                if j % 2:
                    parts = c.completions.create(model=name, prompt=p, max_tokens=6,
                                                 temperature=0, stream=True)  # fmt: skip
                    text = "".join(x.choices[0].text for x in parts)
                else:
                    r = c.completions.create(model=name, prompt=p, max_tokens=6, temperature=0)
                    text = r.choices[0].text
                got.append((p, text))
        except Exception as e:  # reported below; a thread must not die silently
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)
    assert len(got) == 128
    assert all(text == alone[p] for p, text in got)
    assert server.served.engine.load["busy"] == 0


def test_a_client_that_goes_away_frees_its_slot(server):
    """The engine is stepped by hand here, so the client is surely gone mid-generation."""
    s = server.served
    served = api.Served(s.cfg, s.tok, s.params, "manual", slots=SLOTS, max_waiting=8)
    srv, thread, port = _start(served, run_engine=False)
    assert not served.engine.running  # the app did not start it
    try:
        body = {"model": "manual", "prompt": "a", "max_tokens": 60, "stream": True}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})  # fmt: skip
        deadline = time.monotonic() + 30
        while not served.engine.waiting:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        seq = served.engine.waiting[0]
        served.engine.step()  # admitted, one chunk decoded
        assert served.engine.load["busy"] == 1 and seq.generated < 60
        conn.sock.shutdown(2)  # gone mid-stream
        conn.close()
        while not seq.cancelled:
            assert time.monotonic() < deadline, "the server never noticed the client left"
            time.sleep(0.02)
        served.engine.step()
        assert served.engine.load["busy"] == 0 and seq.generated < 60
    finally:
        srv.should_exit = True
        thread.join(20)


def test_a_model_file_serves_under_its_name(server, tmp_path):
    from lm.inference import export

    path = export.export(server.run, tmp_path / "tiny.lm")
    served = api.load_served(str(path), slots=SLOTS, max_waiting=4, chunk=4)
    assert served.name == "tiny" and served.m == server.served.m
    c = []
    seq = engine.Sequence([served.tok.bos_id], 3, jax.random.PRNGKey(0), GREEDY,
                          lambda *a: c.append(a) and False, lambda r: c.append(r))  # fmt: skip
    served.engine.submit([seq])
    served.engine.run_until_idle()
    assert c[-1] in ("length", "stop")


def test_api_key_and_a_full_queue_answer_clearly(server):
    s = server.served
    served = api.Served(s.cfg, s.tok, s.params, "keyed", slots=SLOTS, max_waiting=2, chunk=4)
    srv, thread, port = _start(served, api_key="sekret")
    try:
        body = {"model": "keyed", "prompt": "a", "max_tokens": 2}
        status, err = _http(port, "POST", "/v1/completions", body)
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        auth = {"Authorization": "Bearer sekret"}
        status, r = _http(port, "POST", "/v1/completions", body, auth)
        assert status == 200 and r["choices"][0]["text"] is not None
        status, err = _http(port, "POST", "/v1/completions", {**body, "n": 3}, auth)
        assert status == 429 and err["error"]["type"] == "rate_limit_exceeded"
        status, _ = _http(port, "POST", "/v1/completions", body, auth)
        assert status == 200  # and it goes on serving
    finally:
        srv.should_exit = True
        thread.join(20)


# ---------------------------------------------------------------- the inspector


def test_inspector_api_is_the_models_numbers(server):
    s = server.served
    status, r = _http(server.port, "POST", "/api/inspect",
                      {"prompt": "def こ", "temperature": 0.5, "top_k": 3, "seed": 2})  # fmt: skip
    assert status == 200, r
    ids = [s.tok.bos_id, *s.tok.encode("def こ")]
    assert r["ids"] == ids and r["labels"][-3:] == ["こ[E3]", "こ[81]", "こ[93]"]
    logits = np.asarray(transformer.apply(s.params, np.asarray([ids]), s.m), np.float64)[0, -1]
    p = np.exp(logits - logits.max())
    p /= p.sum()
    top = r["top"]
    assert [t["id"] for t in top] == list(np.argsort(-p, kind="stable")[:10])
    np.testing.assert_allclose([t["model_p"] for t in top], np.sort(p)[::-1][:10], rtol=1e-4)
    assert [t["removed_by"] for t in top] == [None] * 3 + ["top_k"] * 7
    assert sum(t["final_p"] for t in top) == pytest.approx(1, abs=1e-6)
    key = jax.random.fold_in(jax.random.PRNGKey(2), len(ids))
    want = int(sampling.sample_token(key, logits[None].astype(np.float32), 0.5, 3)[0])
    assert r["sampled"]["id"] == want and r["sampled"]["kept"]
    w = np.asarray(r["attention"]["weights"])
    chex.assert_shape(w, (s.m.n_layers, s.m.n_heads, len(ids), len(ids)))
    np.testing.assert_allclose(w.sum(-1), 1, atol=1e-3)
    status, st = _http(server.port, "POST", "/api/stages", {"prompt": "ab", "max_new": 4})
    assert status == 200 and any("every stage" in line for line in st["lines"])
    assert len(st["matrices"]["x_in"]) == s.m.n_layers
    status, err = _http(server.port, "POST", "/api/inspect", {"ids": [1, 10**6]})
    assert status == 400 and "ids" in err["error"]["message"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_page_in_headless_chromium_offline(server, tmp_path):
    """The page loads with nothing from outside 127.0.0.1 and shows the tokens, the bar
    chart and an attention map; clicking a bar appends that token; a screenshot is kept."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the serve extra")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium: apt-get install -y chromium (Debian's package)")
    html = (api.STATIC / "index.html").read_text() + (api.STATIC / "app.js").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN, no fonts from outside
    outside = []
    shot = Path(os.environ.get("LM_SCREENSHOT_DIR", tmp_path)) / "inspector.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})

            def route(r):  # offline: anything not on our server is refused, and noted
                if r.request.url.startswith(f"http://127.0.0.1:{server.port}/"):
                    return r.continue_()
                outside.append(r.request.url)
                return r.abort()

            page.route("**/*", route)
            page.goto(f"http://127.0.0.1:{server.port}/?prompt=def%20こんにちは&top_k=5")
            page.wait_for_selector("#attention[data-drawn]", timeout=60_000)
            n_tokens = page.locator(".tok").count()
            assert n_tokens == 1 + len("def こんにちは".encode())
            assert page.locator(".bar").count() == 10
            assert page.locator(".bar.removed").count() == 5  # top-k 5 of the ten shown
            assert "こ[E3]" in page.locator("#tokens").inner_text()
            assert page.evaluate("document.fonts.check('12px lm-cjk', 'こ')")
            assert page.locator("#status").inner_text() == ""
            page.locator(".bar").nth(1).click()
            page.wait_for_function(f"document.querySelectorAll('.tok').length > {n_tokens}",
                                   timeout=60_000)  # fmt: skip
            page.screenshot(path=str(shot))
            canvas = page.locator("#attention").screenshot()
            page.click("#stages-button")  # what `lm inspect --stages` prints, and heatmaps
            page.wait_for_function("document.getElementById('stages-lines').textContent"
                                   ".includes('every stage')", timeout=60_000)  # fmt: skip
            assert page.locator("#stage-maps canvas").count() > 10
        finally:
            browser.close()
    assert not outside, outside
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[0] >= 1000 and img.shape[1] == 1100
    heat = imread(io.BytesIO(canvas), format="png")[..., :3]
    assert len(np.unique(heat.reshape(-1, 3), axis=0)) > 20  # a drawn heatmap, not blank
    print(f"inspector screenshot: {shot}")


# ---------------------------------------------------------------- the command


def test_lm_serve_command_starts_serves_and_stops(run_dir):
    p = subprocess.Popen(
        [sys.executable, "-c", LM, "serve", "--run", str(run_dir), "--port", "0",
         "--slots", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        lines = []
        deadline = time.monotonic() + 180
        while not any("OpenAI API" in line for line in lines):
            assert time.monotonic() < deadline and p.poll() is None, lines
            lines.append(p.stdout.readline())
        url = lines[-1].split("OpenAI API: ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=3, timeout=60)
        r = c.completions.create(model="run", prompt="a", max_tokens=3, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop")
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    rest = p.stdout.read()
    assert p.returncode == 0 and "stopped" in rest, rest


def test_lm_serve_refuses_bad_flags_in_one_line(run_dir, capsys):
    for args, culprit in ((["--slots", "0"], "--slots"), ([], "--run"),
                          (["--run", str(run_dir), "--model", "x.lm"], "not both")):  # fmt: skip
        extra = [] if "--run" in args or not args else ["--run", str(run_dir)]
        assert cli.main(["serve", *extra, *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0], err


# ---------------------------------------------------------------- lm chat


def test_chat_session_streams_replies_and_obeys_commands(server):
    s = server.served
    out = io.StringIO()
    settings = dict(temperature=0.0, top_k=None, top_p=None, min_p=None, max_new=5, seed=0)
    session = chat.Session(s.cfg, s.tok, s.params, settings, out, system="Be brief.")
    lines = "hello\n/temp 0.7\n/top_p 2\n/top_k 3\n/frobnicate\n/history\n/quit\nnever read\n"
    assert chat.run(session, io.StringIO(lines)) == 0
    text = out.getvalue()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    ids = [s.tok.bos_id, *s.tok.encode(chat_prompt(msgs))]
    new = sampling.generate(s.params, s.m, [ids], jax.random.PRNGKey(0), 5, GREEDY,
                            eos_id=s.tok.eos_id, pad_id=s.tok.pad_id)[0]  # fmt: skip
    ts = TextStream(s.decode, [CHAT_STOP], lstrip=True)
    reply = ts.push([t for t in new if t != s.tok.eos_id])[0] + ts.close()
    assert f"assistant> {reply}\n" in text
    assert "temperature=0.7" in text and "/top_p: must be in (0, 1]" in text
    assert "top_k=3" in text and "unknown command /frobnicate" in text
    assert "user: hello" in text and session.settings["temperature"] == 0.7
    assert "never read" not in text and len(session.history) == 2


def test_chat_drops_old_turns_to_fit_the_context(server):
    s = server.served
    out = io.StringIO()
    settings = dict(temperature=0.0, top_k=None, top_p=None, min_p=None, max_new=2, seed=0)
    session = chat.Session(s.cfg, s.tok, s.params, settings, out)
    chat.run(session, io.StringIO("one\ntwo\nthree\n" + "z" * 70 + "\n"))
    text = out.getvalue()
    assert "dropped the oldest" in text  # a 64-token context holds two short turns
    assert "shorten it" in text  # a message that cannot fit alone says so
    assert session.replies == 3


def test_lm_chat_in_a_pseudo_terminal(run_dir):
    """`lm chat` as a person runs it: a terminal, the `you>` prompt, a reply, a command."""
    import pty
    import select

    main, sub = pty.openpty()
    p = subprocess.Popen(
        [sys.executable, "-c", LM, "chat", "--run", str(run_dir), "--temperature", "0",
         "--max-new-tokens", "3"],
        stdin=sub, stdout=sub, stderr=sub, cwd=ROOT, close_fds=True,
    )  # fmt: skip
    os.close(sub)
    seen = b""

    def until(text: bytes, start: int) -> bool:
        nonlocal seen
        deadline = time.monotonic() + 120
        while text not in seen[start:] and time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                try:
                    seen += os.read(main, 4096)
                except OSError:  # the child closed the terminal
                    break
        return text in seen[start:]

    try:
        assert until(b"you> ", 0), seen
        n = len(seen)
        os.write(main, b"hi\r")
        assert until(b"assistant> ", n) and until(b"you> ", n), seen
        n = len(seen)
        os.write(main, b"/temp 0.5\r")
        assert until(b"temperature=0.5", n) and until(b"you> ", n), seen
        os.write(main, b"/quit\r")
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(main)
