"""The offline tiktoken tokenizer: byte-level round trips, one token per digit, and <|mask|> safety."""
import pytest

import cdlm


def test_round_trip_including_unicode():
    enc = cdlm.get_tokenizer()
    for text in ['347+285=', 'a=4;b=a+3;c=b*a;print(c)', 'héllo wörld ✓ 漢字 🙂', '']:
        assert enc.decode(enc.encode_ordinary(text)) == text


def test_digits_are_single_tokens_and_vocab_is_exact():
    enc = cdlm.get_tokenizer()
    assert enc.encode_ordinary('0123456789') == list(range(48, 58))
    assert enc.n_vocab == cdlm.VOCAB_SIZE and cdlm.MASK_ID == cdlm.VOCAB_SIZE - 1


def test_text_that_contains_mask_never_becomes_the_mask_id():
    enc = cdlm.get_tokenizer()
    ids = enc.encode_ordinary('1+1=<|mask|><|endoftext|>')
    assert cdlm.MASK_ID not in ids and cdlm.EOS_ID not in ids
    assert enc.encode('<|mask|>', allowed_special='all') == [cdlm.MASK_ID]
    with pytest.raises(ValueError):  # tiktoken refuses special text unless it is explicitly allowed
        enc.encode('<|mask|>')


def test_encode_example_pads_prompt_left_and_response_right():
    enc = cdlm.get_tokenizer()
    row = cdlm.encode_example(enc, '1+2=', '3', prompt_len=6, gen_len=3)
    assert row == [cdlm.EOS_ID, cdlm.EOS_ID, 49, 43, 50, 61, 51, cdlm.EOS_ID, cdlm.EOS_ID]
    with pytest.raises(SystemExit, match='longer than'):
        cdlm.encode_example(enc, '12345+1=', '', prompt_len=4, gen_len=3)


def test_decode_response_stops_at_eos_and_shows_masks():
    enc = cdlm.get_tokenizer()
    import torch
    row = torch.tensor([55, cdlm.MASK_ID, 53, cdlm.EOS_ID, 49])
    assert cdlm.decode_response(enc, row) == '7_5'


def test_encode_prompt_and_generated_tokens():
    enc = cdlm.get_tokenizer()
    assert cdlm.encode_prompt(enc, '1+2=', 6) == cdlm.encode_example(enc, '1+2=', '3', 6, 3)[:6]
    assert cdlm.generated_tokens(enc, '12', 48) == 3 and cdlm.generated_tokens(enc, '1' * 60, 48) == 48
