using System.Text.Json;
using Spectre.Console;

namespace LiveMigration.Cli.Commands;

/// <summary>
/// Where commands write: tables through Spectre.Console (colours only on a terminal; wide enough when piped so
/// ids are never wrapped), JSON as plain text, errors to stderr.
/// </summary>
public static class Output
{
    public static IAnsiConsole Console { get; } = Create();

    private static IAnsiConsole Create()
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.Detect,
            ColorSystem = ColorSystemSupport.Detect,
            Out = new AnsiConsoleOutput(System.Console.Out),
        });
        if (System.Console.IsOutputRedirected) console.Profile.Width = 240;
        return console;
    }

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static void Json(string text) => System.Console.Out.WriteLine(text);

    public static void Json(JsonElement element) => System.Console.Out.WriteLine(JsonSerializer.Serialize(element, Indented));

    public static void Json<T>(T value) => System.Console.Out.WriteLine(JsonSerializer.Serialize(value, Indented));

    public static void Error(string message) => System.Console.Error.WriteLine($"lsm: {message}");

    /// <summary>A string property, or "" when the API left it out or null.</summary>
    public static string Str(this JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var v)
            ? v.ValueKind switch
            {
                JsonValueKind.String => v.GetString() ?? "",
                JsonValueKind.Null or JsonValueKind.Undefined => "",
                _ => v.ToString(),
            }
            : "";

    public static long Long(this JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt64() : 0;

    public static bool Bool(this JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;

    public static IEnumerable<JsonElement> Array(this JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array
            ? v.EnumerateArray()
            : [];

    public static JsonElement Obj(this JsonElement element, string name) =>
        element.ValueKind == JsonValueKind.Object && element.TryGetProperty(name, out var v) ? v : default;

    public static string Escape(string text) => Markup.Escape(text);
}
