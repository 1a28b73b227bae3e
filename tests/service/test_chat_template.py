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
