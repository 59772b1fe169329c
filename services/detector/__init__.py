"""The detector service: finds faces in photos, aligns them and scores their quality."""
