namespace LiveMigration.Coordinator.Api;

/// <summary>How the API quotes what a client sent back to it in a refusal.</summary>
public static class ApiText
{
    /// <summary>
    /// What is wrong with a JSON body, in the client's terms: where, and whether it is not JSON at all or a value of the
    /// wrong type. The serializer's own message for the latter names the .NET type it could not make (ours or System.Int64).
    /// </summary>
    public static string JsonProblem(System.Text.Json.JsonException json)
    {
        var where = json.Path is { } path ? $" at {path}" : "";
        var position = json.LineNumber is { } line ? $" (line {line + 1}, byte {json.BytePositionInLine})" : "";
        return json.Message.StartsWith("The JSON value could not be converted", StringComparison.Ordinal)
            ? $"the request body is not the JSON this endpoint takes: the value{where} is of the wrong type or out of range{position}"
            : $"the request body is not valid JSON: {json.Message}";
    }

    /// <summary>At most 80 characters of the client's text: enough to recognise it, never a way to make answers huge.</summary>
    public static string Clip(string text) => text.Length > 80 ? text[..80] + "…" : text;
}
