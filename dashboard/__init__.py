"""SPI Landscape dashboard (Streamlit pages in ``pages/``, data layer in ``data/``)."""
