"""Dynamic key exchange on issuer links over real sockets (issue 17 item 2): key changes from
either side under steady load lose and double-count nothing; a tampered key block or a wrong
KCV is refused and traffic continues on the old key."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.config import AdminConfig, AdminTokenConfig
from gateway.ops.admin import hash_token
from loadtest.generator import LoadConfig, LoadGenerator
from loadtest.stats import RunStats
from protocols.codec import Codec
from protocols.message import Message
from tests.helpers import DEMO_CONF, ISSUERS, Stack, eventually, running_stack

pytestmark = pytest.mark.anyio

ALPHA_SYNTHETIC = "4761739"  # alpha: a ZPK and a ZAK (the link MACs), PIN 0000
OPERATOR = "operator-TEST-ONLY"
VIEWER = "viewer-TEST-ONLY"


def _admin() -> AdminConfig:
    return AdminConfig(
        port=0,
        tokens=(
            AdminTokenConfig(id="op", role="operator", sha256=hash_token(OPERATOR)),
            AdminTokenConfig(id="view", role="viewer", sha256=hash_token(VIEWER)),
        ),
    )


def _load(stack: Stack, seconds: float) -> LoadGenerator:
    return LoadGenerator(
        LoadConfig(
            port=stack.port,
            connections=2,
            rate=120.0,
            duration=seconds,
            warmup=0.0,
            mix="pin_tpk=1",
            prefixes=(ALPHA_SYNTHETIC,),
            timeout=5.0,
            data=DEMO_CONF / "data.toml",
            seed=17,
        )
    )


def _assert_nothing_lost(stats: RunStats, generator: LoadGenerator, stack: Stack) -> None:
    # Every request answered, every answer an approval: none 96 (HSM/MAC) or 63 (security).
    assert stats.error_count == 0, stats.errors
    assert dict(stats.codes) == {"00": stats.count}
    assert stats.count == generator.scheduled > 0
    # Nothing double-counted at the issuer: one posting per approval (one request each).
    postings = stack.issuers["alpha"].host.postings
    assert len(postings) == stats.count


async def test_key_changes_under_load_lose_nothing(pki_dir: Path) -> None:
    async with running_stack(pki_dir, link_timeout=2.0, risk="", admin=_admin()) as stack:
        gateway, issuer = stack.gateway, stack.issuers["alpha"]
        start = gateway.keys.issuer("alpha")
        assert start is not None
        assert start.generation == 0
        generator = _load(stack, 3.0)
        results: dict[str, object] = {}

        async def change_keys() -> None:
            await anyio.sleep(0.7)
            # On demand, through the admin API (operator role, audited).
            assert gateway.admin_port is not None
            url = f"http://127.0.0.1:{gateway.admin_port}/admin/links/alpha/rotate-keys"
            async with httpx.AsyncClient() as client:
                viewer = await client.post(url, headers={"Authorization": f"Bearer {VIEWER}"})
                assert viewer.status_code == 403
                answer = await client.post(url, headers={"Authorization": f"Bearer {OPERATOR}"})
            results["switch"] = answer.json()
            assert answer.status_code == 200, answer.text
            await anyio.sleep(0.7)
            # The issuer changes the ZPK, then the ZAK, from its side.
            results["issuer_zpk"] = await issuer.initiate_key_change("zpk")
            results["issuer_zak"] = await issuer.initiate_key_change("zak")

        async with anyio.create_task_group() as tg:
            tg.start_soon(change_keys)
            stats = await generator.run()

        _assert_nothing_lost(stats, generator, stack)
        switch = results["switch"]
        assert isinstance(switch, dict)
        assert switch["rotated"] is True
        assert switch["results"] == ["zpk: changed", "zak: changed"]
        assert (results["issuer_zpk"], results["issuer_zak"]) == ("00", "00")
        now = gateway.keys.issuer("alpha")
        assert now is not None
        assert now.generation >= 2
        assert now.zpk != start.zpk
        assert now.zak != start.zak
        assert now.zpk is not None
        assert now.zpk.startswith("S")  # held as a key block under the LMK
        # Both sides hold the same keys: their KCVs agree with the issuer's HSM.
        security = issuer.host.book.security
        assert security is not None
        assert now.zpk_kcv == security.lmk.kcv(security.zpk or "")
        assert now.zak_kcv == security.lmk.kcv(security.zak or "")
        status = gateway.status()
        alpha = next(link for link in status["links"] if link["issuer"] == "alpha")
        assert alpha["key_lifecycle"]["generation"] == now.generation
        assert alpha["key_lifecycle"]["zpk_kcv"] == now.zpk_kcv
        assert alpha["key_lifecycle"]["changes"] == 4
        assert alpha["key_lifecycle"]["refusals"] == 0
        assert now.zpk not in str(status)
        metrics = gateway.metrics.render().decode()
        assert 'switch_link_key_changes_total{initiator="switch",issuer="alpha",key="zpk"} 1.0' in (
            metrics
        )
        assert 'switch_link_key_changes_total{initiator="issuer",issuer="alpha",key="zak"} 1.0' in (
            metrics
        )


@pytest.mark.parametrize("fault", ["tamper", "wrong_kcv"])
async def test_a_bad_key_change_is_refused_and_traffic_continues(pki_dir: Path, fault: str) -> None:
    async with running_stack(pki_dir, link_timeout=2.0, risk="") as stack:
        gateway, issuer = stack.gateway, stack.issuers["alpha"]
        before = gateway.keys.issuer("alpha")
        security = issuer.host.book.security
        assert before is not None
        assert security is not None
        issuer_zpk = security.zpk
        generator = _load(stack, 2.0)
        outcome: list[str] = []

        async def bad_change() -> None:
            await anyio.sleep(0.5)
            outcome.append(await issuer.initiate_key_change("zpk", fault=fault))

        async with anyio.create_task_group() as tg:
            tg.start_soon(bad_change)
            stats = await generator.run()

        assert outcome == ["63"]  # refused by the switch
        _assert_nothing_lost(stats, generator, stack)
        after = gateway.keys.issuer("alpha")
        assert after == before  # the old key stays in use on both sides
        assert security.zpk == issuer_zpk
        reason = "block_refused" if fault == "tamper" else "kcv_mismatch"
        metrics = gateway.metrics.render().decode()
        assert (
            f'switch_link_key_refusals_total{{by="switch",issuer="alpha",key="zpk",'
            f'reason="{reason}"}} 1.0' in metrics
        )
        alpha = next(link for link in gateway.status()["links"] if link["issuer"] == "alpha")
        assert alpha["key_lifecycle"]["refusals"] == 1
        assert reason in alpha["key_lifecycle"]["last_refusal"]


async def test_sign_on_changes_keys_when_configured(pki_dir: Path) -> None:
    async with running_stack(
        pki_dir,
        link_timeout=2.0,
        risk="",
        link_options={issuer: {"key_exchange_on_sign_on": True} for issuer in ISSUERS},
    ) as stack:
        gateway = stack.gateway
        dataset_kcvs = {i.id: i.zpk.kcv for i in gateway.dataset.issuers if i.zpk is not None}

        def changed() -> bool:
            keys = [gateway.keys.issuer(i) for i in ("alpha", "beta", "gamma")]
            return all(k is not None and k.generation == 1 for k in keys)

        await eventually(changed)
        for issuer in ("alpha", "beta", "gamma"):
            keys = gateway.keys.issuer(issuer)
            assert keys is not None
            assert keys.zpk_kcv != dataset_kcvs[issuer]
            security = stack.issuers[issuer].host.book.security
            assert security is not None
            assert keys.zpk_kcv == security.lmk.kcv(security.zpk or "")
        beta = gateway.keys.issuer("beta")
        assert beta is not None
        assert beta.zak is None  # beta's link does not MAC: only its ZPK changes


async def test_scheduled_key_changes_and_the_next_one_shown(pki_dir: Path) -> None:
    async with running_stack(
        pki_dir, link_timeout=2.0, risk="", link_options={"alpha": {"key_rotation_interval": 0.4}}
    ) as stack:
        gateway = stack.gateway

        def generation() -> int:
            keys = gateway.keys.issuer("alpha")
            return keys.generation if keys is not None else 0

        await eventually(lambda: generation() >= 2)
        alpha = next(link for link in gateway.status()["links"] if link["issuer"] == "alpha")
        keys = alpha["key_lifecycle"]
        assert keys["rotation_interval"] == 0.4
        assert keys["next_change"] is not None
        assert keys["last_change"] is not None
        assert keys["next_change"] >= keys["last_change"]
        security = stack.issuers["alpha"].host.book.security
        assert security is not None
        current = gateway.keys.issuer("alpha")
        assert current is not None
        # The last change the switch installed is the issuer's current key (a change may be
        # under way: then the issuer is one ahead and holds ours as its previous one).
        await eventually(
            lambda: (
                (k := gateway.keys.issuer("alpha")) is not None
                and k.zpk_kcv == security.lmk.kcv(security.zpk or "")
            )
        )


async def test_the_issuer_program_changes_keys_on_sighup(pki_dir: Path) -> None:
    async with running_stack(pki_dir, link_timeout=2.0, risk="") as stack:
        issuer = stack.issuers["alpha"]
        await stack.task_group.start(issuer._keys_on_signal)  # what issuer-sim run starts
        os.kill(os.getpid(), signal.SIGHUP)

        def both_changed() -> bool:
            return issuer.key_changes.get("accepted", 0) == 2

        await eventually(both_changed)
        keys = stack.gateway.keys.issuer("alpha")
        security = issuer.host.book.security
        assert keys is not None
        assert security is not None
        assert keys.zpk_kcv == security.lmk.kcv(security.zpk or "")
        assert keys.zak_kcv == security.lmk.kcv(security.zak or "")


async def test_the_issuer_refuses_a_key_under_another_zmk(pki_dir: Path) -> None:
    async with running_stack(pki_dir, link_timeout=2.0, risk="") as stack:
        gateway = stack.gateway
        security = stack.issuers["alpha"].host.book.security
        assert security is not None
        security.zmk, _ = security.lmk.generate()  # the two sides' ZMKs no longer agree
        before = gateway.keys.issuer("alpha")
        result = await gateway.rotate_link_keys("alpha")
        assert result is not None
        assert result["rotated"] is False
        assert result["results"] == ["zpk: refused: rc_63", "zak: refused: rc_63"]
        assert gateway.keys.issuer("alpha") == before
        metrics = gateway.metrics.render().decode()
        assert (
            'switch_link_key_refusals_total{by="issuer",issuer="alpha",key="zak",'
            'reason="rc_63"} 1.0' in metrics
        )
        # Traffic goes on under the old keys.
        generator = _load(stack, 1.0)
        stats = await generator.run()
        _assert_nothing_lost(stats, generator, stack)
        assert await gateway.rotate_link_keys("omega") is None


async def test_a_lost_answer_to_our_key_change_is_asked_again(pki_dir: Path) -> None:
    """The issuer installed the key but its 0810 was lost: the same 0800 again is answered
    from its first answer (nothing imported twice) and both sides end on the same key."""
    async with running_stack(pki_dir, link_timeout=0.5, risk="") as stack:
        issuer = stack.issuers["alpha"]
        serve = issuer.serve_frame
        lost: list[bytes] = []

        def losing_first_key_answer(
            frame: bytes, codec: Codec | None = None
        ) -> tuple[Message | None, float] | None:
            served = serve(frame, codec)
            answer = served[0] if served is not None else None
            if answer is not None and "53" in answer.fields and not lost:
                lost.append(frame)
                return None, 0.0
            return served

        issuer.serve_frame = losing_first_key_answer  # type: ignore[method-assign]
        result = await stack.gateway.rotate_link_keys("alpha")
        assert result is not None
        assert result["results"] == ["zpk: changed", "zak: changed"]
        assert len(lost) == 1
        keys = stack.gateway.keys.issuer("alpha")
        security = issuer.host.book.security
        assert keys is not None
        assert security is not None
        assert keys.zpk_kcv == security.lmk.kcv(security.zpk or "")
        assert security.generation == 1  # the switch's generation, both keys of it


async def test_a_link_whose_dialect_cannot_carry_a_key_change_keeps_its_keys(
    pki_dir: Path,
) -> None:
    # iso87-bcd's field 53 is n16: no room for a KCV in hex.
    async with running_stack(
        pki_dir,
        link_timeout=2.0,
        risk="",
        dialects={"beta": "iso87-bcd"},
        link_options={"beta": {"key_exchange_on_sign_on": True}},
    ) as stack:
        gateway = stack.gateway
        before = gateway.keys.issuer("beta")
        result = await gateway.rotate_link_keys("beta")
        assert result is not None
        assert result["rotated"] is False
        assert "dialect" in result["reason"]
        assert gateway.keys.issuer("beta") == before
        beta = next(link for link in gateway.status()["links"] if link["issuer"] == "beta")
        assert beta["key_lifecycle"]["exchange"] is False
        alpha = await gateway.rotate_link_keys("alpha")
        assert alpha is not None
        assert alpha["rotated"] is True
