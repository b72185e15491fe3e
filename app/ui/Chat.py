"""Armada's Streamlit app: the entry script that ``armada ui`` (and ``make run``) starts.

    armada ui --server.port 8502        # Streamlit's own options pass through

It only frames the pages (``st.navigation``) and turns any error a page raises into a readable
message. The pages live in ``app/ui/views/``: Chat, Arena, Leaderboard, Evaluations and Adapters &
training. Nothing heavy is imported here: torch and the models load on the first question, once per
process (the runtime is cached, see ``app/ui/state.py``).
"""

from __future__ import annotations

import streamlit as st

from app.ui import render

st.set_page_config(page_title="Armada", page_icon="⚓", layout="wide")

PAGES = [
    st.Page("views/chat.py", title="Chat", icon=":material/chat:", default=True),
    st.Page("views/arena.py", title="Arena", icon=":material/swords:"),
    st.Page("views/leaderboard.py", title="Leaderboard", icon=":material/leaderboard:"),
    st.Page("views/evaluations.py", title="Evaluations", icon=":material/fact_check:"),
    st.Page("views/adapters.py", title="Adapters & training", icon=":material/model_training:"),
]

page = st.navigation(PAGES)
try:
    page.run()
except Exception as e:  # a page's error is a message, never a traceback (st.rerun/stop pass)
    render.error(e)
