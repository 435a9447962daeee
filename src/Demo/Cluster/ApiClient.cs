using System.Net.Http.Json;
using System.Text.Json;

namespace LiveMigration.Demo.Cluster;

/// <summary>A small client of the Coordinator's HTTP API, for the demo and the multi-process tests.</summary>
/// <param name="token">The API token when the Coordinator has one (a local cluster's, from its token file).</param>
public sealed class ApiClient(string baseUrl, string? token = null) : IDisposable
{
    private readonly HttpClient _http = new()
    {
        BaseAddress = new Uri(baseUrl),
        Timeout = TimeSpan.FromSeconds(30),
        DefaultRequestHeaders = { Authorization = token is null ? null : new("Bearer", token) },
    };

    public async Task<bool> IsUpAsync()
    {
        try { return (await _http.GetAsync("/healthz")).IsSuccessStatusCode; }
        catch (HttpRequestException) { return false; }
        catch (TaskCanceledException) { return false; }
    }

    public async Task<JsonElement> GetAsync(string path)
    {
        var response = await _http.GetAsync(path);
        var body = await response.Content.ReadFromJsonAsync<JsonElement>();
        if (!response.IsSuccessStatusCode)
            throw new ApiException((int)response.StatusCode, body.TryGetProperty("code", out var c) ? c.GetString() ?? "" : "", body.ToString());
        return body;
    }

    public async Task<JsonElement> PostAsync(string path, object? body)
    {
        var response = await _http.PostAsJsonAsync(path, body ?? new { });
        var answer = await response.Content.ReadFromJsonAsync<JsonElement>();
        if (!response.IsSuccessStatusCode)
            throw new ApiException((int)response.StatusCode, answer.TryGetProperty("code", out var c) ? c.GetString() ?? "" : "", answer.ToString());
        return answer;
    }

    /// <summary>Starts a migration of one disk; returns its id.</summary>
    public Task<string> StartMigrationAsync(string vm, string image, string destination, string strategy, string copyMode = "background", long bandwidth = 0) =>
        StartMigrationAsync(vm, [image], destination, strategy, copyMode, bandwidth);

    /// <summary>Starts one migration of the VM's <paramref name="images"/>, all to <paramref name="destination"/>; returns its id.</summary>
    public async Task<string> StartMigrationAsync(string vm, IReadOnlyList<string> images, string destination, string strategy, string copyMode = "background", long bandwidth = 0)
    {
        var answer = await PostAsync("/api/migrations", new
        {
            vm, disks = images.Select(image => new { image, destination }).ToArray(), strategy, copyMode, bandwidthBytesPerSecond = bandwidth,
        });
        return answer.GetProperty("id").GetString()!;
    }

    public void Dispose() => _http.Dispose();
}

public sealed class ApiException(int status, string code, string body) : Exception($"API answered {status} {code}: {body}")
{
    public int Status { get; } = status;
    public string Code { get; } = code;
}
