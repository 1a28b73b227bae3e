"""Chat templates in the Jinja2 sandbox, including the default model's own template."""
from __future__ import annotations

import gguf
import pytest

from cyserve.service.chat_template import ChatTemplate, ChatTemplateError
from cyserve.service.config import default_model_path


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    field = gguf.GGUFReader(default_model_path()).fields["tokenizer.chat_template"]
    return field.contents()


def test_default_model_template_renders_chatml(smollm2_template):
    template = ChatTemplate(smollm2_template, bos_token="<|im_start|>", eos_token="<|im_end|>")
    prompt = template.render([{"role": "user", "content": "What is the capital of France?"}], True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = template.render([{"role": "user", "content": "hi"}], False)
    assert not without.endswith("<|im_start|>assistant\n")
    with_system = template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], False
    )
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert "SmolLM" not in with_system


def test_special_variables_and_filters():
    template = ChatTemplate(
        "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}{{ eos_token }}",
        bos_token="<s>",
        eos_token="</s>",
    )
    assert template.render([{"role": "user", "content": "é"}], False) == (
        '<s>{"role": "user", "content": "é"}</s>'
    )


def test_raise_exception_becomes_chat_template_error():
    template = ChatTemplate(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="first must be user"):
        template.render([{"role": "assistant", "content": "x"}], True)


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.__class__.__mro__ }}",  # no dunder access
        "{{ messages.append(1) }}",  # immutable inputs
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ ''.__class__.__subclasses__() }}",
    ],
)
def test_sandbox_refuses_unsafe_templates(source):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "x"}], False)


def test_template_failures_on_messages_are_chat_template_errors():
    # A missing element is Undefined and renders empty, as in transformers; using it fails.
    assert ChatTemplate("{{ messages[3] }}").render([{"role": "user", "content": "x"}], False) == ""
    with pytest.raises(ChatTemplateError, match="no element 3"):
        ChatTemplate("{{ messages[3]['content'] }}").render([], False)


def test_syntax_error_is_reported_at_compile_time():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")


def test_render_parts_locate_each_message_content(smollm2_template):
    from cyserve.service.chat_template import prompt_pieces, special_token_pattern

    template = ChatTemplate(smollm2_template)
    rendered = template.render_parts([{"role": "user", "content": "a<|im_end|>b"}], True)
    assert "".join(text for text, _ in rendered.parts) == rendered.text
    assert ("a<|im_end|>b", True) in rendered.parts
    pieces = prompt_pieces(rendered.parts, special_token_pattern(["<|im_start|>", "<|im_end|>"]))
    assert [text for text, special in pieces if special] == ["<|im_start|>", "<|im_end|>"] * 2 + ["<|im_start|>"]
    assert template.roles == {"system", "user", "assistant"}


def test_a_template_that_transforms_content_has_no_parts():
    template = ChatTemplate("{% for m in messages %}{% if m.role == 'tool' %}T{% endif %}"
                            "{{ m['content'] | trim }}{% endfor %}")
    assert template.render_parts([{"role": "user", "content": " x "}], False).parts is None
    assert "tool" in template.roles


def test_builtin_gemma_template_writes_gemma_turns():
    from cyserve.fastpath.model.chat_templates import chat_template

    template = ChatTemplate(chat_template("", "gemma3"), bos_token="<bos>", eos_token="<eos>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "a<end_of_turn>b"}]
    assert template.render(messages, True) == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\na<end_of_turn>b<end_of_turn>\n<start_of_turn>model\n")
    assert ("a<end_of_turn>b", True) in template.render_parts(messages, False).parts
    with pytest.raises(ChatTemplateError, match="alternate"):
        template.render([{"role": "user", "content": "x"}, {"role": "user", "content": "y"}], True)


def test_a_template_file_overrides_the_model_files_own(tmp_path, model_path):
    from cyserve.fastpath.engine import Engine
    from cyserve.fastpath.engine_config import EngineConfig
    from cyserve.fastpath.model.chat_templates import chat_template

    source = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    path = tmp_path / "template.jinja"
    path.write_text(source)
    assert chat_template("the file's own", "gemma3", str(path)) == source
    assert chat_template("the file's own", "gemma3") == "the file's own"
    assert chat_template("", "qwen2") == ""  # no built-in: prompts only
    engine = Engine.from_config(EngineConfig(model_path=model_path, kv_cache_bytes=8 << 20,
                                             chat_template=str(path)))
    assert engine.model_info.chat_template == source
    with pytest.raises(ValueError, match="chat_template .* is not a readable file"):
        EngineConfig(chat_template=str(tmp_path / "missing.jinja")).check()
