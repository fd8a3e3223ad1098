"""DMA jobs: each drives one or more Agents through one NDMP operation."""
