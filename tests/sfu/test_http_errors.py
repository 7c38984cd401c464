"""Every signalling error over a real HTTP server: status, JSON body, and nobody else disturbed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from denoiser.engine import Engine
from support.peers import make_offer
from support.sfu import RunningSfu, SfuFactory


@pytest.fixture
async def sfu(sfu_factory: SfuFactory, gain_engine: Engine) -> RunningSfu:
    return await sfu_factory(gain_engine, max_sdp_bytes=4096)


async def request(sfu: RunningSfu, method: str, path: str, token: str | None = None,
                  body: bytes | str | None = None, content_type: str | None = "application/sdp",
                  headers: dict[str, str] | None = None) -> tuple[int, dict, dict[str, str]]:
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    if content_type is not None and body is not None:
        hdrs["Content-Type"] = content_type
    async with sfu.session.request(method, sfu.url(path), data=body, headers=hdrs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json(), dict(resp.headers)


async def expect(sfu: RunningSfu, status: int, code: str, method: str, path: str,
                 **kwargs: object) -> dict[str, str]:
    got, body, headers = await request(sfu, method, path, **kwargs)  # type: ignore[arg-type]
    assert (got, body["error"]) == (status, code), body
    assert body["message"]
    return headers


async def test_healthz(sfu: RunningSfu) -> None:
    async with sfu.session.get(sfu.url("/healthz")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok" and body["engine"] == "LocalEngine" and body["rooms"] == 0


async def test_token_errors_are_401(sfu: RunningSfu, make_token: Callable[..., str]) -> None:
    offer = await make_offer("sendonly")
    headers = await expect(sfu, 401, "missing_token", "POST", "/whip/r1", body=offer)
    assert headers["WWW-Authenticate"].startswith("Bearer")
    await expect(sfu, 401, "invalid_token", "POST", "/whip/r1", body=offer,
                 headers={"Authorization": "Basic dXNlcjpwdw=="})
    await expect(sfu, 401, "invalid_token", "POST", "/whip/r1", body=offer, token="not.a.jwt")
    forged = make_token("r1", "alice", secret="another-secret-0123456789abcdef0123456789")
    await expect(sfu, 401, "invalid_token", "POST", "/whip/r1", body=offer, token=forged)
    expired = make_token("r1", "alice", ttl=60, now=1_000_000)
    await expect(sfu, 401, "token_expired", "POST", "/whip/r1", body=offer, token=expired)
    await expect(sfu, 401, "invalid_token", "POST", "/whip/r1", body=offer, token="x" * 5000)
    await expect(sfu, 401, "missing_token", "DELETE", "/whip/r1/somesession")


async def test_wrong_room_and_grants_are_403(sfu: RunningSfu,
                                             make_token: Callable[..., str]) -> None:
    offer = await make_offer("sendonly")
    await expect(sfu, 403, "wrong_room", "POST", "/whip/r2", body=offer,
                 token=make_token("r1", "alice"))
    await expect(sfu, 403, "missing_grant", "POST", "/whip/r1", body=offer,
                 token=make_token("r1", "alice", grants=("subscribe",)))
    listen = await make_offer("recvonly")
    await expect(sfu, 403, "missing_grant", "POST", "/whep/r1/bob", body=listen,
                 token=make_token("r1", "alice", grants=("publish",)))
    await expect(sfu, 403, "wrong_room", "POST", "/whep/r2/bob", body=listen,
                 token=make_token("r1", "alice"))
    await expect(sfu, 403, "own_voice", "POST", "/whep/r1/alice", body=listen,
                 token=make_token("r1", "alice"))
    await expect(sfu, 403, "wrong_room", "DELETE", "/whip/r2/somesession",
                 token=make_token("r1", "alice"))


async def test_bad_requests_are_400_413_415(sfu: RunningSfu,
                                            make_token: Callable[..., str]) -> None:
    token = make_token("r1", "alice")
    offer = await make_offer("sendonly")
    await expect(sfu, 400, "bad_mode", "POST", "/whip/r1?mode=loud", body=offer, token=token)
    await expect(sfu, 415, "unsupported_media_type", "POST", "/whip/r1", body=offer,
                 token=token, content_type="application/json")
    await expect(sfu, 415, "unsupported_media_type", "POST", "/whip/r1", token=token)
    await expect(sfu, 413, "sdp_too_large", "POST", "/whip/r1", body=offer + "a=x\r\n" * 2000,
                 token=token)

    async def chunked():  # no Content-Length: the cap applies while reading
        for _ in range(100):
            yield b"a=padding-padding-padding-padding-padding-padding-padding-padding\r\n"

    await expect(sfu, 413, "sdp_too_large", "POST", "/whip/r1", body=chunked(), token=token)
    await expect(sfu, 400, "bad_sdp", "POST", "/whip/r1", body="hello", token=token)
    await expect(sfu, 400, "bad_sdp", "POST", "/whip/r1", body=b"v=0\r\n\xff\xfe", token=token)
    no_audio = offer.replace("m=audio ", "m=video ")
    await expect(sfu, 400, "bad_sdp", "POST", "/whip/r1", body=no_audio, token=token)
    broken = "\r\n".join(line for line in offer.split("\r\n")
                         if not line.startswith(("a=fingerprint", "a=ice-ufrag")))
    await expect(sfu, 400, "bad_sdp", "POST", "/whip/r1", body=broken, token=token)
    # A publisher offer that sends nothing.
    await expect(sfu, 400, "bad_sdp", "POST", "/whip/r1", body=await make_offer("recvonly"),
                 token=token)
    # None of it left anything behind.
    assert sfu.ctx.registry.room_count == 0
    assert sfu.ctx.engine is not None and sfu.ctx.engine.live_streams == 0


async def test_unknown_things_are_404(sfu: RunningSfu, make_token: Callable[..., str]) -> None:
    token = make_token("r1", "bob")
    listen = await make_offer("recvonly")
    await expect(sfu, 404, "unknown_room", "POST", "/whep/r1/alice", body=listen, token=token)
    await expect(sfu, 404, "unknown_session", "DELETE", "/whip/r1/nosuchsession", token=token)
    await expect(sfu, 404, "unknown_session", "DELETE", "/whep/r1/alice/nosuch", token=token)
    await expect(sfu, 404, "not_found", "GET", "/no/such/page")


async def test_patch_options_and_cors(sfu: RunningSfu, make_token: Callable[..., str]) -> None:
    headers = await expect(sfu, 405, "trickle_not_supported", "PATCH", "/whip/r1/abc",
                           body="a=candidate", content_type="application/trickle-ice-sdpfrag")
    assert "DELETE" in headers["Allow"]
    await expect(sfu, 405, "method_not_allowed", "GET", "/whip/r1")
    async with sfu.session.options(sfu.url("/whip/r1"), headers={
            "Origin": "http://example.test", "Access-Control-Request-Method": "POST"}) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        assert resp.headers["Accept-Post"] == "application/sdp"
    async with sfu.session.options(sfu.url("/whep/r1/alice/abc")) as resp:
        assert resp.status == 204 and "DELETE" in resp.headers["Access-Control-Allow-Methods"]


async def test_demo_page_is_served(sfu: RunningSfu) -> None:
    index = sfu.ctx.settings.web_dir / "index.html"
    async with sfu.session.get(sfu.url("/")) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert await resp.text() == index.read_text()
