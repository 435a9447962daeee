namespace LiveMigration.Dashboard.Tests;

/// <summary>One server-sent event, or a comment line (<see cref="Comment"/> set, no event name).</summary>
public sealed record ServerSentEvent(string? Name, string Data, string? Comment);

/// <summary>Reads text/event-stream as a browser's EventSource does: blocks end at a blank line, ':' starts a comment.</summary>
public sealed class EventStreamReader(Stream stream)
{
    private readonly StreamReader _reader = new(stream);

    /// <summary>The next event or comment, or null when the server ended the stream.</summary>
    public async Task<ServerSentEvent?> NextAsync(CancellationToken ct)
    {
        string? name = null;
        var data = new List<string>();
        while (await _reader.ReadLineAsync(ct) is { } line)
        {
            if (line.Length == 0)
            {
                if (name is not null || data.Count > 0) return new ServerSentEvent(name ?? "message", string.Join('\n', data), null);
                continue;
            }
            if (line.StartsWith(':'))
            {
                if (name is null && data.Count == 0) return new ServerSentEvent(null, "", line[1..].Trim());
                continue;
            }
            var colon = line.IndexOf(':');
            var field = colon < 0 ? line : line[..colon];
            var value = colon < 0 ? "" : line[(colon + 1)..].TrimStart(' ');
            if (field == "event") name = value;
            else if (field == "data") data.Add(value);
        }
        return null;
    }
}
