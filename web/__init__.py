"""The web pages for people: find me, people, clusters to review, photos (``facesearch web``)."""
