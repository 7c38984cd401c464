"""What several test modules share: known-answer models, audio, peers and servers."""
