"""The Streamlit app (``armada ui``). Pages import no torch at start; heavy parts load lazily."""
