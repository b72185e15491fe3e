"""What people touch: the CLI, the LangGraph question graph and the Streamlit UI."""
