"""The council job's driver: what ``jobs/council.py`` runs on the cluster."""
