"""Specifications of the round engine when other processes store a round's records."""

from __future__ import annotations

from koiitasks.testing import memory_store, sandbox
from tests.conftest import HASH_PUZZLE


class TestForgetRoundCache:
    """An engine whose shards ran elsewhere re-reads the round from the store."""

    def test_engine_sees_submissions_and_reports_other_engines_stored(self) -> None:
        """After forget_round_cache, accepted() and audit_reports() include what a second
        engine over the same store wrote after the first one had listed the round."""
        store = memory_store()
        orchestrator = sandbox(HASH_PUZZLE, nodes=6, seed=3, store=store)
        worker = sandbox(HASH_PUZZLE, nodes=6, seed=3, store=store)
        orchestrator.begin(0)
        engine = orchestrator.engine
        engine.open_round(0)
        assert engine.accepted(0) == {}  # listed once, before any worker stored anything

        worker.begin(0)
        worker.engine.execute_shard(0, engine.eligible(0))
        assert engine.accepted(0) == {}  # still the cached listing
        engine.forget_round_cache(0)
        assert set(engine.accepted(0)) == set(engine.eligible(0))

        assignments = engine.plan_audits(0)
        assert engine.audit_reports(0) == {}
        worker.clock.set_ms(orchestrator.clock.now_ms())
        worker.engine.audit_shard(0, assignments, sorted(assignments))
        engine.forget_round_cache(0)
        assert set(engine.audit_reports(0)) == set(assignments)

    def test_a_round_settled_after_forgetting_matches_one_engine_alone(self) -> None:
        """Shards run by a second engine, then distribute and settle by the first, write the
        bytes one engine writes alone."""
        alone = sandbox(HASH_PUZZLE, nodes=7, seed=4, adversaries={"lazy": 1})
        alone.run_round(0)

        store = memory_store()
        orchestrator = sandbox(HASH_PUZZLE, nodes=7, seed=4, adversaries={"lazy": 1}, store=store)
        worker = sandbox(HASH_PUZZLE, nodes=7, seed=4, adversaries={"lazy": 1}, store=store)
        engine = orchestrator.engine
        orchestrator.begin(0)
        engine.open_round(0)
        worker.begin(0)
        worker.engine.execute_shard(0, engine.eligible(0))
        engine.forget_round_cache(0)
        assignments = engine.plan_audits(0)
        worker.clock.set_ms(orchestrator.clock.now_ms())
        worker.engine.audit_shard(0, assignments, sorted(assignments))
        engine.forget_round_cache(0)
        engine.settle(0, engine.distribute(0))

        assert {k: store.read(k) for k in store.list()} == {
            k: alone.store.read(k) for k in alone.store.list()
        }
