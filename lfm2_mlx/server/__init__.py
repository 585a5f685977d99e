"""`lfm2-audio serve`: the OpenAI-compatible HTTP server, a thin surface over `lfm2_mlx.api`.

Read top-down; imports only flow down this list (and into the library):

    cli               flags, Settings, startup, signals and the exit status (no web stack imported)
    app               the Starlette app: routing, API key and body-size guards, each handler's error policy
    transcriptions    POST /v1/audio/transcriptions -> LFM2Audio.transcribe_many
    speech            POST /v1/audio/speech -> LFM2Audio.speak_stream
    chat_completions  POST /v1/chat/completions -> new_chat + user_turn, LFM2Audio.stream
    chat_messages     OpenAI messages -> conversation turns
    protocol          OpenAI's wire format: the one errors -> HTTP status mapping, fields, bodies
    state             Settings, the audio-id store, relaying a job's items to a response
    engine            the single worker thread that owns the model; the bounded wait line
"""
