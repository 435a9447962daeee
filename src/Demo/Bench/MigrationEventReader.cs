using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text.Json;

namespace LiveMigration.Demo.Bench;

/// <summary>
/// Follows the Coordinator's stream of every migration's changes (<c>GET /api/migrations/events</c>) and tells when a
/// given migration finished: a bench waits on the events, as the dashboard does, instead of polling each migration.
/// A finish seen before anyone asked is kept until asked for.
/// </summary>
internal sealed class MigrationEventReader(string baseUrl, string? token) : IDisposable
{
    private readonly HttpClient _http = new() { BaseAddress = new Uri(baseUrl), Timeout = Timeout.InfiniteTimeSpan };
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentDictionary<string, TaskCompletionSource<JsonElement>> _finished = new();
    private Task? _reading;

    /// <summary>Called with every change the stream brings (on the reader's thread), before a finish is handed out.</summary>
    public Action<JsonElement>? OnChange { get; init; }

    private TaskCompletionSource<JsonElement> Slot(string id) =>
        _finished.GetOrAdd(id, _ => new TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously));

    /// <summary>Returns once the stream is open, so no change after this call is missed.</summary>
    public async Task StartAsync()
    {
        var request = new HttpRequestMessage(HttpMethod.Get, "/api/migrations/events");
        if (token is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, _stop.Token);
        response.EnsureSuccessStatusCode();
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync(_stop.Token));
        _reading = Task.Run(async () =>
        {
            try
            {
                while (await reader.ReadLineAsync(_stop.Token) is { } line)
                {
                    if (!line.StartsWith("data:")) continue;
                    var migration = JsonDocument.Parse(line.AsMemory(5)).RootElement.Clone();
                    OnChange?.Invoke(migration);
                    if (migration.GetProperty("finished").GetBoolean())
                        Slot(migration.GetProperty("id").GetString()!).TrySetResult(migration);
                }
            }
            catch (OperationCanceledException) { }
            finally
            {
                response.Dispose();
            }
        });
    }

    /// <summary>The migration's finished state, from the stream; after <paramref name="limit"/> a TimeoutException.</summary>
    public async Task<JsonElement> FinishedAsync(string id, TimeSpan limit)
    {
        var slot = Slot(id);
        if (await Task.WhenAny(slot.Task, Task.Delay(limit)) != slot.Task)
            throw new TimeoutException($"migration {id} did not finish within {limit.TotalSeconds:0} s (as the event stream tells)");
        _finished.TryRemove(id, out _);
        return await slot.Task;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _http.Dispose();
        _stop.Dispose();
    }
}
