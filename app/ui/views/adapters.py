"""Adapters & training: registered LoRA adapters, nightly runs, promote and roll back.

A page of the app (``armada ui``). It renders the ``adapter`` table (name, version, base model,
metrics, checksum state) and the nightly runs (``EvalRun`` rows with ``config["kind"] ==
"nightly"``). Promote and roll back ask for a confirmation, then change the rows' ``status``
through ``app/ui/registry.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st
from sqlmodel import select

from app.ui import registry, render, state
from app.ui.metrics import checksum_state
from core.store import Adapter, EvalRun

if TYPE_CHECKING:
    from app.runtime import Armada

EMPTY_HINT = (
    "No adapters registered yet. The nightly training job (gather votes → build RAFT data → "
    "train a LoRA → evaluate → promote or reject) registers each adapter it trains here."
)


def _adapters_table(adapters: list[Adapter]) -> None:
    rows = [
        {
            "name": a.name,
            "version": a.version,
            "status": a.status,
            "base model": a.base_model,
            "checksum": checksum_state(a.sha256, Path(a.path).exists()),
            "metrics": json.dumps(a.metrics, sort_keys=True)[:200],
            "created": a.created_at,
        }
        for a in adapters
    ]
    st.dataframe(rows, hide_index=True, key="adapters-table")


@render.safe_callback
def _confirm() -> None:
    kind, name, version = st.session_state.pop("adapter_pending")
    store = state.runtime().store
    done = (
        registry.promote(store, name, version)
        if kind == "promote"
        else registry.roll_back(store, name)
    )
    st.toast(f"{name} v{done.version} is now promoted.", icon=":material/check:")


def _cancel() -> None:
    st.session_state.pop("adapter_pending", None)


def _actions(adapters: list[Adapter]) -> None:
    st.subheader("Promote or roll back")
    names = sorted({a.name for a in adapters})
    name = st.selectbox("Adapter", names, key="adapter-name")
    versions = sorted((a for a in adapters if a.name == name), key=lambda a: -a.version)
    current = next((a for a in versions if a.status == registry.PROMOTED), None)
    st.caption(f"Serving: v{current.version}" if current else "No version is promoted yet.")
    left, right = st.columns(2)
    with left:
        version = st.selectbox(
            "Version", [a.version for a in versions], format_func=lambda v: f"v{v}", key="adapter-v"
        )
        if st.button(
            "Promote…", key="adapter-promote", disabled=bool(current and current.version == version)
        ):
            st.session_state.adapter_pending = ("promote", name, version)
    with right:
        previous = registry.previous_version(versions)
        st.caption(f"Roll back to: v{previous.version}" if previous else "Nothing to roll back to.")
        if st.button("Roll back…", key="adapter-rollback", disabled=previous is None):
            st.session_state.adapter_pending = ("rollback", name, previous.version)
    pending = st.session_state.get("adapter_pending")
    if pending:
        kind, pname, pversion = pending
        verb = "Promote" if kind == "promote" else "Roll back to"
        with st.container(border=True):
            st.warning(
                f"{verb} **{render.escape_markdown(pname)} v{pversion}**? Arms using "
                f"{render.escape_markdown(pname)} will serve this version.",
                icon=":material/warning:",
            )
            c1, c2 = st.columns(2)
            c1.button("Confirm", key="adapter-confirm", type="primary", on_click=_confirm)
            c2.button("Cancel", key="adapter-cancel", on_click=_cancel)


def _nightly(rt: Armada) -> None:
    st.subheader("Nightly runs")
    with rt.store.session() as s:
        runs = [
            r
            for r in s.exec(select(EvalRun).order_by(EvalRun.created_at.desc()))
            if (r.config or {}).get("kind") == "nightly"
        ]
    if not runs:
        st.caption("No nightly training runs yet.")
        return
    st.dataframe(
        [
            {
                "started": r.created_at,
                "status": r.status,
                "decision": (r.metrics or {}).get("decision", ""),
                "reasons": "; ".join((r.metrics or {}).get("reasons") or []),
                "candidate": json.dumps((r.metrics or {}).get("candidate", {}))[:120],
                "champion": json.dumps((r.metrics or {}).get("champion", {}))[:120],
            }
            for r in runs
        ],
        hide_index=True,
        key="nightly-table",
    )


def page() -> None:
    rt = state.runtime()
    st.title("Adapters & training")
    render.show_deferred_errors()
    with rt.store.session() as s:
        adapters = list(s.exec(select(Adapter).order_by(Adapter.name, Adapter.version)))
    if not adapters:
        st.info(EMPTY_HINT, icon=":material/lightbulb:")
    else:
        _adapters_table(adapters)
        _actions(adapters)
    _nightly(rt)


page()
