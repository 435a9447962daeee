using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor.Qmp;

/// <summary>An asynchronous QMP event (BLOCK_JOB_READY, SHUTDOWN…) with its data object (an empty object when it has none).</summary>
public sealed record QmpEvent(string Name, JsonElement Data, DateTimeOffset Timestamp);

/// <summary>
/// An asynchronous client for one QEMU monitor socket. One reader loop matches replies to commands by
/// their id and raises events; commands may be issued concurrently. A socket that dies (EOF, reset)
/// fails every pending and later command with <see cref="ErrorCodes.VmNotRunning"/>, so nobody waits forever.
/// </summary>
public sealed class QmpClient : IAsyncDisposable
{
    private static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(30);

    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<string, TaskCompletionSource<JsonElement>> _pending = new();
    private readonly CancellationTokenSource _closing = new();
    private readonly TaskCompletionSource _disconnected = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _nextId;
    private Task _readLoop = Task.CompletedTask;
    private string? _deathReason;

    private QmpClient(string socketPath, Socket socket)
    {
        SocketPath = socketPath;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(_stream, new UTF8Encoding(false));
    }

    public string SocketPath { get; }

    /// <summary>The greeting's <c>QMP</c> object (version, capabilities).</summary>
    public JsonElement Greeting { get; private set; }

    /// <summary>Raised on the reader loop for each asynchronous event; handlers must be quick and must not throw.</summary>
    public event Action<QmpEvent>? EventReceived;

    /// <summary>Raised once when the connection ends for any reason other than <see cref="DisposeAsync"/>, with the reason.</summary>
    public event Action<string>? Disconnected;

    public bool IsConnected => _deathReason is null;

    /// <summary>Completes when the connection is gone (dead socket or disposed).</summary>
    public Task Completion => _disconnected.Task;

    /// <summary>Connects, reads the greeting and leaves capabilities negotiation mode.</summary>
    public static async Task<QmpClient> ConnectAsync(string socketPath, TimeSpan? timeout = null, CancellationToken ct = default)
    {
        var limit = timeout ?? DefaultTimeout;
        using var timeoutCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeoutCts.CancelAfter(limit);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        QmpClient? client = null;
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), timeoutCts.Token);
            client = new QmpClient(socketPath, socket);
            // QEMU serves one monitor client at a time: a second client gets no greeting until the first leaves.
            var greetingLine = await client._reader.ReadLineAsync(timeoutCts.Token)
                ?? throw new OperationFailedException(ErrorCodes.VmNotRunning, $"QMP socket {socketPath} closed before its greeting");
            using (var greeting = JsonDocument.Parse(greetingLine))
            {
                if (!greeting.RootElement.TryGetProperty("QMP", out var qmp))
                    throw new OperationFailedException(ErrorCodes.QmpError, $"QMP socket {socketPath} sent no greeting but: {greetingLine}");
                client.Greeting = qmp.Clone();
            }
            client._readLoop = Task.Run(client.ReadLoopAsync, CancellationToken.None);
            await client.ExecuteAsync("qmp_capabilities", null, limit, ct);
            return client;
        }
        catch (Exception e) when (e is SocketException or IOException)
        {
            if (client is not null) await client.DisposeAsync(); else socket.Dispose();
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"cannot connect to QMP socket {socketPath}: {e.Message}", e);
        }
        catch (OperationCanceledException e) when (!ct.IsCancellationRequested)
        {
            if (client is not null) await client.DisposeAsync(); else socket.Dispose();
            throw new OperationFailedException(ErrorCodes.Timeout,
                $"QMP socket {socketPath} did not greet within {limit.TotalSeconds:0.#} s (is another client connected?)", e);
        }
        catch
        {
            if (client is not null) await client.DisposeAsync(); else socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Runs a command and returns its <c>return</c> value. A QMP error becomes
    /// <see cref="OperationFailedException"/> with <see cref="ErrorCodes.QmpError"/> and "command: class: desc".
    /// </summary>
    /// <param name="arguments">Serialized with System.Text.Json (use a dictionary for names with dashes); null for none.</param>
    public async Task<JsonElement> ExecuteAsync(string command, object? arguments = null, TimeSpan? timeout = null,
        CancellationToken ct = default)
    {
        ThrowIfDead(command);
        var id = "c" + Interlocked.Increment(ref _nextId);
        var reply = new TaskCompletionSource<JsonElement>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = reply;
        // The connection may have died between the check and the registration: re-check so no reply is awaited forever.
        if (_deathReason is not null) FailPending();

        var message = new Dictionary<string, object?> { ["execute"] = command, ["id"] = id };
        if (arguments is not null) message["arguments"] = arguments;
        var line = Encoding.UTF8.GetBytes(JsonSerializer.Serialize(message) + "\n");
        var limit = timeout ?? DefaultTimeout;
        try
        {
            await _writeLock.WaitAsync(ct);
            try
            {
                await _stream.WriteAsync(line, CancellationToken.None); // never half a line: the protocol could not recover
                await _stream.FlushAsync(CancellationToken.None);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                MarkDead($"write failed: {e.Message}");
            }
            finally
            {
                _writeLock.Release();
            }
            return await reply.Task.WaitAsync(limit, ct);
        }
        catch (QmpCommandException e)
        {
            throw new OperationFailedException(ErrorCodes.QmpError, $"{command}: {e.ErrorClass}: {e.Description}", e);
        }
        catch (TimeoutException e)
        {
            throw new OperationFailedException(ErrorCodes.Timeout,
                $"QMP command {command} got no reply within {limit.TotalSeconds:0.#} s on {SocketPath}", e);
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    private void ThrowIfDead(string command)
    {
        if (_deathReason is { } reason)
            throw new OperationFailedException(ErrorCodes.VmNotRunning, $"QMP command {command}: connection to {SocketPath} is gone ({reason})");
    }

    private async Task ReadLoopAsync()
    {
        string reason;
        try
        {
            while (true)
            {
                var line = await _reader.ReadLineAsync(_closing.Token);
                if (line is null) { reason = "QEMU closed the monitor socket"; break; }
                if (line.Length == 0) continue;
                Dispatch(line);
            }
        }
        catch (OperationCanceledException)
        {
            reason = "client closed";
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            reason = $"monitor socket failed: {e.Message}";
        }
        MarkDead(reason);
    }

    private void Dispatch(string line)
    {
        using var document = JsonDocument.Parse(line);
        var root = document.RootElement;
        if (root.TryGetProperty("event", out var eventName))
        {
            var data = root.TryGetProperty("data", out var d) ? d.Clone() : EmptyObject();
            var timestamp = DateTimeOffset.UtcNow;
            if (root.TryGetProperty("timestamp", out var ts)
                && ts.TryGetProperty("seconds", out var s) && ts.TryGetProperty("microseconds", out var us))
                timestamp = DateTimeOffset.FromUnixTimeSeconds(s.GetInt64()).AddTicks(us.GetInt64() * 10);
            var qmpEvent = new QmpEvent(eventName.GetString() ?? "", data, timestamp);
            foreach (var handler in EventReceived?.GetInvocationList() ?? [])
            {
                try { ((Action<QmpEvent>)handler)(qmpEvent); }
                catch (Exception) { /* a faulty subscriber must not stop the reader loop */ }
            }
            return;
        }
        if (!root.TryGetProperty("id", out var idElement) || idElement.ValueKind != JsonValueKind.String) return;
        var id = idElement.GetString()!;
        if (!_pending.TryRemove(id, out var reply)) return; // timed out already
        if (root.TryGetProperty("error", out var error))
        {
            var errorClass = error.TryGetProperty("class", out var c) ? c.GetString() : "?";
            var desc = error.TryGetProperty("desc", out var de) ? de.GetString() : "?";
            reply.TrySetException(new QmpCommandException(errorClass ?? "?", desc ?? "?"));
        }
        else
        {
            reply.TrySetResult(root.TryGetProperty("return", out var result) ? result.Clone() : EmptyObject());
        }
    }

    private static JsonElement EmptyObject()
    {
        using var document = JsonDocument.Parse("{}");
        return document.RootElement.Clone();
    }

    private void MarkDead(string reason)
    {
        var wasAlive = Interlocked.CompareExchange(ref _deathReason, reason, null) is null;
        FailPending();
        if (!wasAlive) return;
        _disconnected.TrySetResult();
        if (_closing.IsCancellationRequested) return; // our own DisposeAsync: nobody needs telling
        foreach (var handler in Disconnected?.GetInvocationList() ?? [])
        {
            try { ((Action<string>)handler)(reason); }
            catch (Exception) { /* a faulty subscriber must not hide the death from the others */ }
        }
    }

    private void FailPending()
    {
        var reason = _deathReason ?? "closed";
        foreach (var id in _pending.Keys)
        {
            if (_pending.TryRemove(id, out var reply))
                reply.TrySetException(new OperationFailedException(ErrorCodes.VmNotRunning,
                    $"connection to QMP socket {SocketPath} is gone ({reason})"));
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_closing.IsCancellationRequested) _closing.Cancel();
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        _socket.Dispose();
        await _readLoop.ContinueWith(_ => { }, TaskScheduler.Default);
        MarkDead("client closed");
        _reader.Dispose();
        await _stream.DisposeAsync();
        _closing.Dispose();
    }
}

/// <summary>QEMU refused a command; the client turns it into <see cref="ErrorCodes.QmpError"/> at the boundary.</summary>
public sealed class QmpCommandException(string errorClass, string description)
    : Exception($"{errorClass}: {description}")
{
    public string ErrorClass { get; } = errorClass;
    public string Description { get; } = description;
}
