using System.Text.Json;
using LiveMigration.Cli.Api;
using Spectre.Console;
using Spectre.Console.Cli;

namespace LiveMigration.Cli.Commands;

/// <summary>
/// <c>lsm migration watch ID</c>: follows one migration through the Coordinator's event stream
/// (<c>GET /api/migrations/{id}/events</c>) until it finishes. On a terminal: a progress bar per disk with its phase
/// and step; piped: one line per change; with <c>--json</c>: each event's JSON on a line of its own. Exit 0 only
/// when the migration completed, 1 when it failed or was cancelled (a suspended one is watched on: an operator may
/// resume it), 3 when the API cannot be reached or the stream breaks off.
/// </summary>
public sealed class MigrationWatchCommand : AsyncCommand<MigrationIdSettings>
{
    public override async Task<int> ExecuteAsync(CommandContext context, MigrationIdSettings settings, CancellationToken ct)
    {
        using var client = settings.Client();
        var stream = new MigrationEventStream(client, settings.Id);
        JsonElement? last;
        if (settings.Json)
            last = await stream.ForEachAsync(e => Output.Json(e.Text), ct);
        else if (Output.Console.Profile.Capabilities.Interactive)
            last = await WithProgressBarsAsync(stream, ct);
        else
            last = await stream.ForEachAsync(e => WriteLine(e.Json), ct);

        if (last is not { } final || !final.Bool("finished"))
            throw new CliFailure(ExitCodes.ApiUnreachable, $"the event stream of migration {settings.Id} ended before the migration finished; `lsm migration show {settings.Id}` tells where it is");
        if (!settings.Json) MigrationView.Write(final);
        return final.Str("status") == "completed" ? ExitCodes.Ok : ExitCodes.OperationFailed;
    }

    public static async Task<JsonElement?> WithProgressBarsAsync(MigrationEventStream stream, CancellationToken ct, Func<JsonElement, bool>? until = null)
    {
        JsonElement? last = null;
        await Output.Console.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .StartAsync(async progress =>
            {
                var bars = new Dictionary<string, ProgressTask>();
                last = await stream.ForEachAsync(e =>
                {
                    var m = e.Json;
                    foreach (var disk in m.Array("disks"))
                    {
                        var image = disk.Str("image");
                        if (!bars.TryGetValue(image, out var bar))
                            bars[image] = bar = progress.AddTask(Short(image), maxValue: 1);
                        var total = disk.Long("total");
                        if (total > 0 && Math.Abs(bar.MaxValue - total) > 0.5) bar.MaxValue = total;
                        bar.Value = m.Str("status") == "completed" ? bar.MaxValue : Math.Min(disk.Long("done"), (long)bar.MaxValue);
                        bar.Description = Output.Escape($"{Short(image)} {m.Str("status")} · {disk.Str("phase")}{(disk.Str("step") is { Length: > 0 } step ? " · " + step : "")}");
                    }
                    if (m.Bool("finished") || until?.Invoke(m) == true)
                        foreach (var bar in bars.Values) bar.StopTask();
                }, ct, until);
            });
        return last;
    }

    public static void WriteLine(JsonElement m)
    {
        var disks = m.Array("disks").Select(d =>
        {
            var total = d.Long("total");
            var percent = m.Str("status") == "completed" ? 100 : total > 0 ? 100.0 * d.Long("done") / total : 0;
            return $"{Short(d.Str("image"))} {d.Str("phase")}{(d.Str("step") is { Length: > 0 } step ? " " + step : "")} {percent:0}%";
        });
        Output.Console.WriteLine($"{DateTime.Now:HH:mm:ss} {m.Str("status")}: {string.Join(", ", disks)}");
    }

    private static string Short(string id) => id.Length > 8 ? id[..8] : id;
}

/// <summary>One <c>event: migration</c> of the stream: its JSON and the text it came as.</summary>
public sealed record MigrationEvent(JsonElement Json, string Text);

/// <summary>The Coordinator's server-sent events of one migration, through the CLI's API client (so the token goes with them).</summary>
public sealed class MigrationEventStream(LsmApiClient client, string id)
{
    /// <summary>
    /// Hands every migration event to <paramref name="onEvent"/> until the server ends the stream (or <paramref name="until"/>
    /// says the caller has seen enough); returns the last one.
    /// </summary>
    public async Task<JsonElement?> ForEachAsync(Action<MigrationEvent> onEvent, CancellationToken ct, Func<JsonElement, bool>? until = null)
    {
        JsonElement? last = null;
        try
        {
            await foreach (var (name, text) in client.StreamAsync($"/api/migrations/{id}/events", ct))
            {
                if (name != "migration") continue;
                var json = JsonDocument.Parse(text).RootElement.Clone();
                last = json;
                onEvent(new MigrationEvent(json, text));
                if (until?.Invoke(json) == true) break;
            }
        }
        catch (IOException)
        {
            // The connection broke off; the caller sees that the last event was not the finished one.
        }
        return last;
    }
}
