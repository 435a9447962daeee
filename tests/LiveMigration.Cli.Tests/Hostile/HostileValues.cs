using System.Text.Json;
using CsCheck;

namespace LiveMigration.Cli.Tests.Hostile;

/// <summary>
/// Generators of what a careless or hostile client sends: strings, ids, numbers, sizes and rates, names and paths.
/// None of them names a thing that exists unless a caller mixes such a thing in on purpose.
/// </summary>
public static class HostileValues
{
    /// <summary>A prefix of every generated name that could become a file or folder, so a leak is easy to find.</summary>
    public const string Marker = "lsm-hostile";

    /// <summary>Text that breaks parsers, paths, logs and terminals; short or long, ASCII or not.</summary>
    public static readonly Gen<string> Text = Gen.Frequency<string>(
        (6, Gen.OneOf("", " ", ".", "..", "../..", "/", "a/b", "%00", "%2F", "a\0b", "line\nbreak", "\r\n", "\t", "-", "--", "--json",
            "null", "true", "0", "-1", "NaN", "Infinity", "{}", "[]", "\"", "'", "\\", "$(id)", "`id`", "; rm -rf /", "%s%n",
            "ünïcødé-名前-🚀", "\u202eevil", "\u0000", "\u007f", "\ufeff", "\ud800", "\u0663\u0664", "\uff11\uff12", "a\u0301")),
        (4, Gen.String[0, 24]),
        (1, Gen.Char['a', 'z'].Select(c => new string(c, 300))),
        (1, Gen.Char['a', 'z'].Select(c => new string(c, 5000))),
        (2, Gen.Guid.Select(g => $"{Marker}-{g:N}")));

    /// <summary>Ids: UUIDs that name nothing, UUIDs in odd spellings, non-UUIDs.</summary>
    public static readonly Gen<string> Id = Gen.OneOf<string>(
        Gen.Guid.Select(g => g.ToString()),
        Gen.Guid.Select(g => g.ToString("B")),
        Gen.Guid.Select(g => g.ToString("N").ToUpperInvariant()),
        Gen.Const(Guid.Empty.ToString()),
        Gen.Guid.Select(g => g.ToString()[..35]),
        Gen.Guid.Select(g => g + "/../" + g),
        Text);

    /// <summary>Numbers as JSON tokens: out of range, negative, fractional, not numbers at all.</summary>
    public static readonly Gen<string> JsonNumber = Gen.OneOf<string>(
        Gen.OneOf("0", "-0", "-1", "-5", "1.5", "1e400", "-1e400", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
            "2147483648", "99999999999999999999999999", "0x10", "NaN", "Infinity", "\"NaN\"", "\"1T\"", "\"-5\"", "1E3", "00012"),
        Gen.Long.Select(l => l.ToString()),
        Gen.Int[-1000, 1000].Select(i => i.ToString()));

    /// <summary>Sizes and rates as an operator would type them, wrong.</summary>
    public static readonly Gen<string> SizeText = Gen.OneOf<string>(
        Gen.OneOf("1T", "-5", "0x10", "9999999999999999999P", "99999999999T", "1e3", "NaN", "-1GiB", "1.5.5MiB", "MiB", "1 furlong",
            "\u0663MiB", "\uff11\uff10M", "513", "0", "-0", "1GiB/s/s", "", " ", "100MiB\n"),
        Gen.Long.Select(l => l.ToString()),
        Text);

    /// <summary>Strings as JSON tokens (escaped as a serializer would).</summary>
    public static readonly Gen<string> JsonText = Text.Select(t => JsonSerializer.Serialize(t));

    /// <summary>Any JSON value, nested a few levels, or a nesting deeper than any parser's limit.</summary>
    public static readonly Gen<string> JsonJunk = Gen.Recursive<string>((depth, inner) => depth >= 3
        ? Gen.OneOf(JsonNumber, JsonText, Gen.OneOf("true", "false", "null", "[]", "{}"))
        : Gen.Frequency<string>(
            (3, JsonNumber),
            (3, JsonText),
            (1, Gen.OneOf("true", "null")),
            (2, inner.Array[0, 3].Select(items => "[" + string.Join(",", items) + "]")),
            (2, Gen.Select(JsonText, inner).Array[0, 3].Select(fields => "{" + string.Join(",", fields.Select(f => $"{f.Item1}: {f.Item2}")) + "}")),
            (1, Gen.Int[65, 400].Select(n => new string('[', n) + new string(']', n)))));

    /// <summary>
    /// A JSON object with these fields, each present or left out, plus maybe a field nobody asked for. Values are
    /// already JSON tokens.
    /// </summary>
    public static Gen<string> JsonObject(params (string Name, Gen<string> Value)[] fields) =>
        fields
            .Aggregate(Gen.Const(new List<string>()), (parts, field) => parts.SelectMany(list => Gen.Frequency(
                (4, field.Value.Select(value => new List<string>(list) { $"{JsonSerializer.Serialize(field.Name)}: {value}" })),
                (1, Gen.Const(list)))))
            .SelectMany(list => Gen.Frequency(
                (4, Gen.Const(list)),
                (1, Gen.Select(JsonText, JsonJunk).Select(extra => new List<string>(list) { $"{extra.Item1}: {extra.Item2}" }))))
            .Select(list => "{" + string.Join(", ", list) + "}");

    /// <summary>
    /// Paths a storage domain must never go under: outside the allowed roots (also by <c>..</c> or through
    /// <paramref name="escapeLink"/>, a symlink inside a root that points out), relative, with NUL or a newline.
    /// </summary>
    public static Gen<string> EscapingPath(string allowedRoot, string escapeLink) => Gen.OneOf<string>(
        Gen.Guid.Select(g => Path.Combine(allowedRoot, "..", $"{Marker}-{g:N}")),
        Gen.Guid.Select(g => Path.Combine(allowedRoot, "sub", "..", "..", $"{Marker}-{g:N}")),
        Gen.Guid.Select(g => Path.Combine(escapeLink, $"{Marker}-{g:N}")),
        Gen.Const(escapeLink),
        Gen.Guid.Select(g => $"/etc/{Marker}-{g:N}"),
        Gen.Guid.Select(g => $"/tmp/../etc/{Marker}-{g:N}"),
        Gen.Guid.Select(g => $"{Marker}-{g:N}"),
        Gen.Guid.Select(g => $"../{Marker}-{g:N}"),
        Gen.Guid.Select(g => Path.Combine(allowedRoot, $"{Marker}-{g:N}\0/x")),
        Gen.Guid.Select(g => Path.Combine(allowedRoot, $"{Marker}-{g:N}\nsecond-line")),
        Gen.Guid.Select(g => Path.Combine(allowedRoot, $"{Marker}-{g:N}\t")),
        Gen.Guid.Select(g => Path.Combine(allowedRoot, $"{Marker}-{g:N}", new string('d', 300))),
        Gen.Guid.Select(g => "/" + string.Join("/", Enumerable.Repeat("..", 40)) + $"/tmp/{Marker}-{g:N}"),
        Gen.Const("/"),
        Gen.Const(""),
        Text);
}
